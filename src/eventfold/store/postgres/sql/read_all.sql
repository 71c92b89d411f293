-- params: tx, seq (the cursor, exclusive), limit
-- ORDER BY names the table columns (e.tx): a bare "tx" would mean the output
-- column tx_id, which no index serves.
-- Only rows of transactions older than the snapshot's xmin: every such
-- transaction has ended, so no row can still appear at or before them.
SELECT tx_id, seq, stream, version, uuid_send(id), type, schema_version, data, metadata,
       recorded_us
FROM {schema}.events AS e
WHERE (tx, seq) > (%(tx)s::text::xid8, %(seq)s::bigint)
  AND tx < pg_snapshot_xmin(pg_current_snapshot())
  AND e.stream NOT IN (SELECT s.stream FROM {schema}.streams AS s WHERE s.deletion IS NOT NULL)
ORDER BY e.tx, e.seq
LIMIT %(limit)s
