-- params: stream
-- Every snapshot of the stream, oldest first (the columns of load_snapshot).
SELECT version, state_type, schema_version, data,
       (extract(epoch FROM recorded_at) * 1000000)::bigint
FROM {schema}.snapshots
WHERE stream = %(stream)s
ORDER BY version
