-- The audit log: one row per call and per read of personal data. Append-only; each
-- row's hash covers the row and the hash of the row before (domain::audit), so an
-- altered, deleted or reordered row breaks the chain there.
CREATE TABLE audit_log (
    seq      INTEGER PRIMARY KEY,          -- 1, 2, 3, ... without gaps
    at       INTEGER NOT NULL,
    identity TEXT    NOT NULL,
    role     TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    scope    TEXT    NOT NULL,
    records  INTEGER NOT NULL,
    outcome  TEXT    NOT NULL,
    trace_id TEXT    NOT NULL,
    hash     BLOB    NOT NULL
);

CREATE INDEX audit_by_identity ON audit_log (identity, at);
CREATE INDEX audit_by_time ON audit_log (at);

-- Where the chain starts after retention removed older rows: the seq and hash of
-- the last removed row (absent while nothing was removed: the chain starts at
-- genesis).
CREATE TABLE audit_anchor (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash BLOB    NOT NULL
);

-- When each grant was last changed, and by whom.
ALTER TABLE grants ADD COLUMN granted_by TEXT NOT NULL DEFAULT '';
