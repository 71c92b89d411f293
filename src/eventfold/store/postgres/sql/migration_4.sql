-- Schema version 4: the transaction id and the recording time also as plain
-- bigints, so that reads return them without a per-row conversion (xid8 to
-- text to bigint, timestamptz to numeric): a quarter of the server's work
-- when reading the log. recorded_at stays for people reading the table.
-- Adding the generated column rewrites the table: on a large store, run this
-- migration in a quiet period.
ALTER TABLE {schema}.events
    ADD COLUMN tx_id bigint GENERATED ALWAYS AS (tx::text::bigint) STORED,
    ADD COLUMN recorded_us bigint;
UPDATE {schema}.events SET recorded_us = (extract(epoch FROM recorded_at) * 1000000)::bigint;
ALTER TABLE {schema}.events
    ALTER COLUMN recorded_us SET DEFAULT (extract(epoch FROM now()) * 1000000)::bigint,
    ALTER COLUMN recorded_us SET NOT NULL;
