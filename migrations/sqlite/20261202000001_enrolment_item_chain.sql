-- Issue 13's profile, on a 1,000,000-order submit: outbox_by_record took 418 of the
-- 915 pages each commit wrote, nearly all for daily enrolments' items, whose record
-- keys are spread over every worker. An enrolment's items are now chained instead:
-- each names the enrolment's item before it (`previous`, taken from the row's
-- `latest_item` when it is queued), so a listing walks back from `latest_item`, and
-- the record index keeps only the other items.
ALTER TABLE outbox ADD COLUMN previous INTEGER;

-- Items flagged before this migration link to whatever item of their record came
-- before them (flagged or not); the unflagged ones stay in the index.
UPDATE outbox SET previous = (
    SELECT max(p.seq) FROM outbox p INDEXED BY outbox_by_record
     WHERE p.record_key = outbox.record_key AND p.seq < outbox.seq)
 WHERE enrolment = 1;

DROP INDEX outbox_by_record;
CREATE INDEX outbox_by_record ON outbox (record_key, seq) WHERE enrolment = 0;
