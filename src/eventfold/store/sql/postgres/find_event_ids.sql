-- params: ids (uuid array)
SELECT id, stream, version, tx::text::bigint, seq
FROM {schema}.events
WHERE id = ANY(%(ids)s::uuid[])
