-- params: id
SELECT tx::text::bigint, seq, stream, version, uuid_send(id), type, schema_version, data, metadata,
       (extract(epoch FROM recorded_at) * 1000000)::bigint
FROM {schema}.events AS e
WHERE id = %(id)s
  AND NOT EXISTS (SELECT 1 FROM {schema}.streams AS s
                  WHERE s.stream = e.stream AND s.deletion IS NOT NULL)
