-- params: stream, from_version, limit
SELECT position, stream, version, id, type, schema_version, data, metadata, recorded_at
FROM eventfold_events
WHERE stream = ? AND version >= ?
ORDER BY version
LIMIT ?
