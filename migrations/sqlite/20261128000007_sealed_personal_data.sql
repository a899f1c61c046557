-- Personal data at rest (src/vault.rs): workers.id_number, name, mobile and
-- accidents.description hold sealed values (BLOB), as do the payloads of outbox items
-- for social security. Rows written before are sealed at the next start.

-- HMAC-SHA-256 of the resident ID number under the lookup key: equality lookups
-- without the number.
ALTER TABLE workers ADD COLUMN id_number_hash BLOB;
CREATE INDEX workers_by_id_number_hash ON workers (id_number_hash);

-- The key every sealed value was last brought under (re-sealing runs at start while
-- it differs from the configured current key).
CREATE TABLE pii_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    sealed_with TEXT    NOT NULL
);
