-- params: tx, seq (the position, exclusive). Visibility as in read_all.sql.
SELECT count(*), min(recorded_us)
FROM {schema}.events AS e
WHERE (tx, seq) > (%(tx)s::text::xid8, %(seq)s::bigint)
  AND tx < pg_snapshot_xmin(pg_current_snapshot())
