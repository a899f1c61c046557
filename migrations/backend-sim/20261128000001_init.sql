-- The backend simulator's own database: what each simulated backend applied, once
-- per idempotency key, and counters of repeats and faults.
CREATE TABLE applied (
    idempotency_key TEXT    PRIMARY KEY,
    backend         TEXT    NOT NULL,   -- social-security or tax
    kind            TEXT    NOT NULL,   -- worker, enrolment, order, accident, statement, declaration
    platform        TEXT    NOT NULL,
    correction      INTEGER NOT NULL,
    payload         BLOB    NOT NULL,   -- the item as received (protobuf)
    applied_at      INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE counters (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
