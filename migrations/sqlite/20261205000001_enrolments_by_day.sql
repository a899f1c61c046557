-- Issue 13's profile: a batch of a day's orders (a platform's daily file, or orders
-- reported as they are taken) wrote 353 pages of daily_enrolments per 10,000-record
-- commit, half of all it wrote: the rows were keyed by worker first, so today's row of
-- each worker sat among that worker's earlier days, all over the table. Keyed by day
-- first, the rows a batch of recent orders changes are neighbours, in the few pages
-- that hold the latest days. Every lookup names the whole key, so none needs an index
-- of its own.
CREATE TABLE daily_enrolments_by_day (
    platform_id   INTEGER NOT NULL REFERENCES platforms (id),
    day           TEXT    NOT NULL,
    worker_id     TEXT    NOT NULL,
    division_code TEXT    NOT NULL,
    order_count   INTEGER NOT NULL,
    latest_item   INTEGER,
    PRIMARY KEY (platform_id, day, worker_id, division_code)
) WITHOUT ROWID;

INSERT INTO daily_enrolments_by_day (platform_id, day, worker_id, division_code, order_count, latest_item)
SELECT platform_id, day, worker_id, division_code, order_count, latest_item FROM daily_enrolments;

DROP TABLE daily_enrolments;
ALTER TABLE daily_enrolments_by_day RENAME TO daily_enrolments;
