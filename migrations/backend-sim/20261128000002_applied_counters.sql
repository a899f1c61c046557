-- Applied items are counted per backend and kind as they are applied
-- (counter 'applied:<backend>/<kind>'), so reading the counts does not scan the
-- payloads. Seeds the counters from what an existing file holds.
INSERT INTO counters (name, value)
SELECT 'applied:' || backend || '/' || kind, count(*) FROM applied GROUP BY backend, kind
ON CONFLICT (name) DO UPDATE SET value = excluded.value;
