-- params: stream, max_version
SELECT version, state_type, schema_version, data, recorded_at
FROM eventfold_snapshots
WHERE stream = ?1 AND version <= ?2
ORDER BY version DESC
LIMIT 1
