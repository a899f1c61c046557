-- Fees, incremental aggregates, declarations and accidents.

-- Instant-delivery tier per platform and division (a city, or a province for all its
-- cities); platforms.delivery_tier applies elsewhere.
CREATE TABLE platform_delivery_tiers (
    platform_id   INTEGER NOT NULL REFERENCES platforms (id),
    division_code TEXT    NOT NULL,
    tier          TEXT    NOT NULL,
    PRIMARY KEY (platform_id, division_code)
) WITHOUT ROWID;

-- Rate tables are append-only and bitemporal: effective_from (which periods) and
-- recorded_at (when known). tier '' applies to every tier.
CREATE TABLE base_rates (
    industry       TEXT    NOT NULL,
    tier           TEXT    NOT NULL,
    effective_from TEXT    NOT NULL,
    fen_per_order  INTEGER NOT NULL,
    recorded_at    INTEGER NOT NULL,
    PRIMARY KEY (industry, tier, effective_from, recorded_at)
) WITHOUT ROWID;

CREATE TABLE float_rates (
    uscc          TEXT    NOT NULL,
    division_code TEXT    NOT NULL,
    year          INTEGER NOT NULL,
    multiplier_e4 INTEGER NOT NULL,          -- ten-thousandths: 1.05 is 10500
    recorded_at   INTEGER NOT NULL,
    PRIMARY KEY (uscc, division_code, year, recorded_at)
) WITHOUT ROWID;

-- Kept in the same transaction as the orders: billable orders per month, industry, city.
CREATE TABLE volume_statements (
    platform_id    INTEGER NOT NULL REFERENCES platforms (id),
    period         TEXT    NOT NULL,
    industry       TEXT    NOT NULL,
    division_code  TEXT    NOT NULL,
    billable_count INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (platform_id, period, industry, division_code)
) WITHOUT ROWID;

-- 按日参保: orders per worker, local day and division; a row exists while count > 0.
CREATE TABLE daily_enrolments (
    platform_id   INTEGER NOT NULL REFERENCES platforms (id),
    worker_id     TEXT    NOT NULL,
    day           TEXT    NOT NULL,
    division_code TEXT    NOT NULL,
    order_count   INTEGER NOT NULL,
    PRIMARY KEY (platform_id, worker_id, day, division_code)
) WITHOUT ROWID;

CREATE TABLE declarations (
    platform_id    INTEGER NOT NULL REFERENCES platforms (id),
    declaration_id TEXT    NOT NULL,
    revision       INTEGER NOT NULL,
    content_hash   BLOB    NOT NULL,
    period         TEXT    NOT NULL,
    division_code  TEXT    NOT NULL,
    industry       TEXT    NOT NULL,
    order_count    INTEGER NOT NULL,
    amount_fen     INTEGER NOT NULL,
    received_at    INTEGER NOT NULL,
    arrival        INTEGER NOT NULL,          -- received_at × 100000 + position in its batch
    PRIMARY KEY (platform_id, declaration_id)
) WITHOUT ROWID;

CREATE INDEX declarations_by_key ON declarations (platform_id, period, industry, division_code);

-- A platform's month closes with its first declaration; it is rated as of then.
CREATE TABLE closed_periods (
    platform_id INTEGER NOT NULL REFERENCES platforms (id),
    period      TEXT    NOT NULL,
    closed_at   INTEGER NOT NULL,
    PRIMARY KEY (platform_id, period)
) WITHOUT ROWID;

CREATE TABLE accidents (
    platform_id   INTEGER NOT NULL REFERENCES platforms (id),
    report_id     TEXT    NOT NULL,
    revision      INTEGER NOT NULL,
    content_hash  BLOB    NOT NULL,
    worker_id     TEXT    NOT NULL,
    order_id      TEXT    NOT NULL,
    occurred_at   INTEGER NOT NULL,
    division_code TEXT    NOT NULL,
    injury_kind   TEXT    NOT NULL,
    description   TEXT    NOT NULL,
    received_at   INTEGER NOT NULL,
    PRIMARY KEY (platform_id, report_id)
) WITHOUT ROWID;
