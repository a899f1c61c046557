-- Platforms, grants, workers, orders and kept rejections.
-- Times are epoch milliseconds (UTC); local dates are YYYY-MM-DD in Asia/Shanghai.

CREATE TABLE platforms (
    id            INTEGER PRIMARY KEY,
    uscc          TEXT    NOT NULL UNIQUE,
    name          TEXT    NOT NULL,
    industries    TEXT    NOT NULL,          -- comma-separated industry codes
    delivery_tier TEXT    NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE platform_divisions (
    platform_id   INTEGER NOT NULL REFERENCES platforms (id),
    division_code TEXT    NOT NULL,
    pilot_start   TEXT    NOT NULL,
    PRIMARY KEY (platform_id, division_code)
) WITHOUT ROWID;

-- Who may do what: identity (certificate SAN URI), role, scope. Deny by default.
CREATE TABLE grants (
    identity   TEXT    NOT NULL,
    role       TEXT    NOT NULL,
    scope      TEXT    NOT NULL,
    expires_at INTEGER,
    granted_at INTEGER NOT NULL,
    PRIMARY KEY (identity, role, scope)
) WITHOUT ROWID;

CREATE TABLE workers (
    platform_id   INTEGER NOT NULL REFERENCES platforms (id),
    worker_id     TEXT    NOT NULL,
    revision      INTEGER NOT NULL,
    content_hash  BLOB    NOT NULL,
    id_type       TEXT    NOT NULL,
    id_number     TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    mobile        TEXT    NOT NULL,
    birth_date    TEXT,
    industries    TEXT    NOT NULL,
    registered_at INTEGER NOT NULL,
    status        TEXT    NOT NULL,
    left_at       INTEGER,
    received_at   INTEGER NOT NULL,
    PRIMARY KEY (platform_id, worker_id)
) WITHOUT ROWID;

CREATE TABLE orders (
    platform_id   INTEGER NOT NULL,
    order_id      TEXT    NOT NULL,
    revision      INTEGER NOT NULL,
    content_hash  BLOB    NOT NULL,
    worker_id     TEXT    NOT NULL,
    industry      TEXT    NOT NULL,
    division_code TEXT    NOT NULL,
    accepted_at   INTEGER NOT NULL,
    completed_at  INTEGER,
    status        TEXT    NOT NULL,
    vehicle_plate TEXT,
    received_at   INTEGER NOT NULL,
    PRIMARY KEY (platform_id, order_id),
    FOREIGN KEY (platform_id, worker_id) REFERENCES workers (platform_id, worker_id)
) WITHOUT ROWID;

CREATE TABLE rejections (
    seq         INTEGER PRIMARY KEY,
    platform_id INTEGER NOT NULL REFERENCES platforms (id),
    kind        TEXT    NOT NULL,
    record_id   TEXT    NOT NULL,
    revision    INTEGER NOT NULL,
    code        TEXT    NOT NULL,
    field       TEXT    NOT NULL,
    message     TEXT    NOT NULL,
    received_at INTEGER NOT NULL
);

CREATE INDEX rejections_by_platform ON rejections (platform_id, seq);
