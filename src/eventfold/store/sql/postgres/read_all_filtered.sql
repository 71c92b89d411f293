-- params: tx, seq (the cursor, exclusive), types (text array or NULL),
-- prefix (or NULL), limit. Visibility as in read_all.sql.
SELECT tx::text::bigint, seq, stream, version, uuid_send(id), type, schema_version, data, metadata,
       (extract(epoch FROM recorded_at) * 1000000)::bigint
FROM {schema}.events AS e
WHERE (tx, seq) > (%(tx)s::text::xid8, %(seq)s::bigint)
  AND tx < pg_snapshot_xmin(pg_current_snapshot())
  AND e.stream NOT IN (SELECT s.stream FROM {schema}.streams AS s WHERE s.deletion IS NOT NULL)
  AND (%(types)s::text[] IS NULL OR type = ANY(%(types)s::text[]))
  AND (%(prefix)s::text IS NULL OR starts_with(stream, %(prefix)s::text))
ORDER BY e.tx, e.seq
LIMIT %(limit)s
