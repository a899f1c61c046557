-- Rates of one caller identity set by an administrator (admin limits put), replacing
-- the configured defaults for it. Read at start and after every change.
CREATE TABLE rate_limits (
    identity TEXT PRIMARY KEY,
    calls_per_second INTEGER NOT NULL CHECK (calls_per_second > 0),
    records_per_second INTEGER NOT NULL CHECK (records_per_second > 0),
    set_by TEXT NOT NULL,
    set_at INTEGER NOT NULL
);

-- One row rewritten by the readiness probe (/ready): proof that a write commits.
CREATE TABLE ops_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
);
