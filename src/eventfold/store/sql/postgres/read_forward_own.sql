-- params: stream, version (first, inclusive), limit. Like read_forward.sql,
-- for the rows the current transaction has just written (inline projections).
SELECT tx::text::bigint, seq, stream, version, uuid_send(id), type, schema_version, data, metadata,
       (extract(epoch FROM recorded_at) * 1000000)::bigint
FROM {schema}.events
WHERE stream = %(stream)s AND version >= %(version)s
ORDER BY version
LIMIT %(limit)s
