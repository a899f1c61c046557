-- Issue 13's profile: reading, decoding and opening a batch's workers was most of the
-- load stage of a batch of orders. Ingest now keeps the workers' state between a
-- platform's transactions, coherent through this counter: every transaction that
-- writes any of the platform's workers raises it by one, and a cached state is used
-- only while the counter read in the transaction equals the one it was kept at.
ALTER TABLE platforms ADD COLUMN workers_version INTEGER NOT NULL DEFAULT 0;
