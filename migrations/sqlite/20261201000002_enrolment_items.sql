-- Issue 13's profile: daily enrolments' items are about half of all outbox items and
-- their record keys are spread over every worker, so each one cost a page of
-- outbox_open when queued and another when settled. A daily enrolment's items
-- replace each other whole (the newest carries the whole count), so only its newest
-- item can still be open: the enrolment's own row, written in the same transaction
-- anyway, now names it (latest_item), and the next item supersedes that one. Such
-- items (enrolment = 1) are not in outbox_open; they never wait, since nothing before
-- them stays open.
ALTER TABLE outbox ADD COLUMN enrolment INTEGER NOT NULL DEFAULT 0;
ALTER TABLE daily_enrolments ADD COLUMN latest_item INTEGER;

-- Only open items need the flag and the pointer (closed ones are never superseded).
-- A record key is `<18-character USCC>/enrolment/<worker>/<YYYY-MM-DD>/<6-digit code>`.
UPDATE outbox SET enrolment = 1
 WHERE state IN ('pending', 'dead') AND substr(record_key, 19, 11) = '/enrolment/';

-- A day that lost its last order had its row deleted; its withdrawal item may still be
-- open. Such rows are kept now, at 0 orders (not an enrolment, but its items' anchor).
INSERT OR IGNORE INTO daily_enrolments (platform_id, worker_id, day, division_code, order_count)
SELECT p.id, substr(o.record_key, 30, length(o.record_key) - 47),
       substr(o.record_key, length(o.record_key) - 16, 10), substr(o.record_key, length(o.record_key) - 5, 6), 0
  FROM outbox o JOIN platforms p ON p.uscc = substr(o.record_key, 1, 18)
 WHERE o.enrolment = 1;

UPDATE daily_enrolments SET latest_item = (
    SELECT max(o.seq) FROM outbox o JOIN platforms p ON p.id = daily_enrolments.platform_id
     WHERE o.record_key = p.uscc || '/enrolment/' || daily_enrolments.worker_id || '/'
                          || daily_enrolments.day || '/' || daily_enrolments.division_code
       AND o.enrolment = 1);

DROP INDEX outbox_open;
CREATE INDEX outbox_open ON outbox (record_key, seq) WHERE state IN ('pending', 'dead') AND enrolment = 0;
