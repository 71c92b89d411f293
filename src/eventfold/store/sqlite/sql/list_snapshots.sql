-- params: stream
-- Every snapshot of the stream, oldest first (the columns of load_snapshot).
SELECT version, state_type, schema_version, data,
       recorded_at
FROM eventfold_snapshots
WHERE stream = ?1
ORDER BY version
