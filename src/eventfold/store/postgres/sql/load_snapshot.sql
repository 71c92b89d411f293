-- params: stream, max_version
SELECT version, state_type, schema_version, data,
       (extract(epoch FROM recorded_at) * 1000000)::bigint
FROM {schema}.snapshots
WHERE stream = %(stream)s AND version <= %(max_version)s
ORDER BY version DESC
LIMIT 1
