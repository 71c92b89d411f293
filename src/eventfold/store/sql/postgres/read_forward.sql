-- params: stream, version (first, inclusive), limit
-- The NOT EXISTS does not depend on the row: PostgreSQL runs it once (InitPlan).
SELECT tx::text::bigint, seq, stream, version, uuid_send(id), type, schema_version, data, metadata,
       (extract(epoch FROM recorded_at) * 1000000)::bigint
FROM {schema}.events
WHERE stream = %(stream)s AND version >= %(version)s
  AND NOT EXISTS (SELECT 1 FROM {schema}.streams
                  WHERE stream = %(stream)s AND deletion IS NOT NULL)
ORDER BY version
LIMIT %(limit)s
