-- params: ids (uuid array)
SELECT id, stream, version, tx_id, seq
FROM {schema}.events
WHERE id = ANY(%(ids)s::uuid[])
