-- A backend's refusal reason is kept bounded (issue 10, kind 7): reasons kept before
-- the bound are cut to 500 characters, followed by '…'. (New reasons also have long
-- numbers masked, which SQL cannot do to old ones; those are replaced on the item's
-- next attempt.)
UPDATE outbox SET last_error = substr(last_error, 1, 500) || '…' WHERE length(last_error) > 500;
