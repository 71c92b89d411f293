-- params: tx, seq (the cursor, exclusive), limit
-- ORDER BY names the table columns (e.tx): a bare "tx" would mean the output
-- column tx_id, which no index serves.
-- Only rows below the log horizon (log_horizon.sql): every transaction that
-- can still add a row before them has ended.
SELECT tx_id, seq, stream, version, uuid_send(id), type, schema_version, data, metadata,
       recorded_us
FROM {schema}.events AS e
WHERE (tx, seq) > (%(tx)s::text::xid8, %(seq)s::bigint)
  AND (e.tx < {horizon}) IS TRUE
  AND e.stream NOT IN (SELECT s.stream FROM {schema}.streams AS s WHERE s.deletion IS NOT NULL)
ORDER BY e.tx, e.seq
LIMIT %(limit)s
