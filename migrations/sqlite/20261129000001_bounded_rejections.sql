-- Echoed values are bounded (issue 10, kind 7): rejections kept before the bound have
-- their record id cut to 64 characters and their message to 300, each followed by
-- '…' (U+2026), which never appears in a valid id, to mark the cut. Field paths are
-- the gateway's own and short, but are bounded the same way.
UPDATE rejections SET record_id = substr(record_id, 1, 64) || '…' WHERE length(record_id) > 64;
UPDATE rejections SET message = substr(message, 1, 300) || '…' WHERE length(message) > 300;
UPDATE rejections SET field = substr(field, 1, 200) || '…' WHERE length(field) > 200;
