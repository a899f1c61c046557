-- Dead letters replayed and not yet delivered (a replay sets handled_by and makes the
-- item pending again). Settling a delivery looks here for an earlier item of the same
-- record, replayed while the later one was on its way, to supersede it: nearly always
-- empty, so settling costs nothing more for the items that were never dead.
CREATE INDEX outbox_replayed ON outbox (record_key, seq) WHERE state = 'pending' AND handled_by IS NOT NULL;
