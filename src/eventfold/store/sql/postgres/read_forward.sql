-- params: stream, version (first, inclusive), limit
SELECT tx::text::bigint, seq, stream, version, uuid_send(id), type, schema_version, data, metadata,
       (extract(epoch FROM recorded_at) * 1000000)::bigint
FROM {schema}.events
WHERE stream = %(stream)s AND version >= %(version)s
ORDER BY version
LIMIT %(limit)s
