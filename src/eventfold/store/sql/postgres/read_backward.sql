-- params: stream, version (first, inclusive), limit
SELECT tx::text::bigint, seq, stream, version, uuid_send(id), type, schema_version, data, metadata,
       (extract(epoch FROM recorded_at) * 1000000)::bigint
FROM {schema}.events
WHERE stream = %(stream)s AND version <= %(version)s
  AND NOT EXISTS (SELECT 1 FROM {schema}.streams
                  WHERE stream = %(stream)s AND deletion IS NOT NULL)
ORDER BY version DESC
LIMIT %(limit)s
