-- params: after, limit
SELECT position, stream, version, id, type, schema_version, data, metadata, recorded_at
FROM eventfold_events
WHERE position > ?
ORDER BY position
LIMIT ?
