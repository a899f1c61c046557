-- Transactional outbox: one row per item to deliver, written in the transaction that
-- stores the record it carries. Each destination delivers in seq order; an item waits
-- while an earlier item of the same record is still pending (a correction never
-- overtakes the revision it replaces).
CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY,
    destination     TEXT    NOT NULL,             -- social-security | tax
    record_key      TEXT    NOT NULL,             -- platform/kind/id
    idempotency_key TEXT    NOT NULL,             -- platform/kind/id/revision
    payload         BLOB    NOT NULL,             -- the encoded delivery item
    state           TEXT    NOT NULL,             -- pending | delivered | dead
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER
);

CREATE INDEX outbox_due ON outbox (destination, state, seq);
CREATE INDEX outbox_by_record ON outbox (destination, record_key, state, seq);
