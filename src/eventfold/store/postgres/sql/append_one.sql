-- append.sql for a batch of one event, with scalar parameters: the most
-- common append, spared the cost of building and sending five arrays.
-- params: stream, low, high (see append.sql), id, type, schema_version, data,
-- metadata, all sent in binary format.
-- A whole append in one statement, run in autocommit mode: one round trip,
-- and atomic on its own (it commits entirely or not at all). `state` probes
-- the stream's version and deleted flag (index lookups); the batch is
-- inserted only if the stream is not deleted and its version is within
-- [low, high], at the versions after it, in batch order (so seq follows
-- version). There is deliberately no ON CONFLICT: a (stream, version) taken
-- by a writer that committed after this statement's snapshot, or an event id
-- already stored, raises a unique violation that undoes the whole statement,
-- so a batch is never stored in part. The caller tells a failed expectation
-- (nothing inserted; the probed version and flag say why) from success.
-- The appends inside a longer transaction (`<name>_in_transaction`, see
-- _statements.py) decide the tx of their rows (own) and may refuse to
-- insert (refusal); else they mark the transaction (the last column). On
-- its own an append's rows take its transaction's id, which it gets with its
-- first row: own, refusal and the mark are NULL.
-- {notify} is pg_notify(channel, '') or NULL (store created with
-- notify=False); it is called once, and only when rows were inserted. NOTIFY
-- is transactional: listeners hear of the batch when it commits.
WITH state AS MATERIALIZED (
    SELECT (SELECT coalesce(max(version), 0) FROM {schema}.events
            WHERE stream = %(stream)b) AS version,
           EXISTS (SELECT 1 FROM {schema}.streams
                   WHERE stream = %(stream)b AND deletion IS NOT NULL) AS deleted,
           c.own, {refusal} AS refusal
    FROM {claim} AS c
), inserted AS (
    INSERT INTO {schema}.events (stream, version, id, type, schema_version, data, metadata,
                                 tx)
    SELECT %(stream)b, s.version + 1, %(id)b::uuid, %(type)b::text,
           %(schema_version)b::integer, %(data)b::bytea, %(metadata)b::bytea,
           coalesce(s.own, pg_current_xact_id())
    FROM state AS s
    WHERE NOT s.deleted AND s.refusal IS NULL
      AND s.version BETWEEN %(low)b::bigint AND %(high)b::bigint
    RETURNING seq, tx
), summary AS (
    SELECT count(*) AS n, max(seq) AS last_seq, max(tx::text::bigint) AS tx FROM inserted
)
SELECT s.version, s.deleted, m.n, m.last_seq, m.tx, CASE WHEN m.n > 0 THEN {notify} END,
       s.refusal, CASE WHEN s.refusal IS NULL THEN {mark} END
FROM state AS s, summary AS m
