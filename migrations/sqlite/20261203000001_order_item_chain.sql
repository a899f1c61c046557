-- Issue 13's profile, on single-order calls: outbox_by_record took 25 of the 84 pages
-- each commit wrote, one random page per order (order ids are spread over the key
-- space). An order's items are now chained from the order's row, as a daily
-- enrolment's are: the row names its newest item (`latest_item`), each item names the
-- item of its record before it (`previous`), and chained items (`chained = 1`) are not
-- in the record index. An order's items still wait for the open ones before them
-- through outbox_open, which holds only open items.
--
-- Items stored before this migration stay in the index (chained = 0); the first
-- chained item of such an order has no `previous`, and a listing or a replay check
-- reads both the chain and the index.
ALTER TABLE outbox ADD COLUMN chained INTEGER NOT NULL DEFAULT 0;
ALTER TABLE orders ADD COLUMN latest_item INTEGER;

DROP INDEX outbox_by_record;
CREATE INDEX outbox_by_record ON outbox (record_key, seq) WHERE enrolment = 0 AND chained = 0;
