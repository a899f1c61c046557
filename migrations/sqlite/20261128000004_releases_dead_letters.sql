-- Versions of derived items, months released to tax, and dead-letter handling.

-- Every ingest batch that writes takes the platform's next batch number; it versions
-- the items derived from the batch (daily enrolments, volume statements,
-- reconciliation updates), so two batches never share an idempotency key.
ALTER TABLE platforms ADD COLUMN batches INTEGER NOT NULL DEFAULT 0;

-- A platform's month whose volume statements were sent to tax; later changes to them
-- are sent as corrections.
CREATE TABLE released_periods (
    platform_id INTEGER NOT NULL REFERENCES platforms (id),
    period      TEXT    NOT NULL,
    released_at INTEGER NOT NULL,
    PRIMARY KEY (platform_id, period)
) WITHOUT ROWID;

-- Dead letters are replayed (back to pending) or discarded (state 'discarded') by an
-- administrator, who is recorded on the item.
ALTER TABLE outbox ADD COLUMN handled_by TEXT;
ALTER TABLE outbox ADD COLUMN handled_at INTEGER;
