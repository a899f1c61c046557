-- Issue 13's profile: the record index held each item's state, so settling an item
-- (pending -> delivered) moved its entry, and every commit rewrote about 130 pages of
-- that index (two thirds of the WAL). Now:
-- * outbox_by_record (record_key, seq) holds every item and never changes after the
--   insert (listings of a record's deliveries, replay checks);
-- * outbox_open holds only the items still open (pending or dead), the ones a new
--   item may have to wait for or supersede: it is as small as the backlog, and its
--   pages stay in the cache.
-- A record key names one destination (`platform/kind/id`), so it needs no column of
-- its own in either index.
DROP INDEX outbox_by_record;
CREATE INDEX outbox_by_record ON outbox (record_key, seq);
CREATE INDEX outbox_open ON outbox (record_key, seq) WHERE state IN ('pending', 'dead');
