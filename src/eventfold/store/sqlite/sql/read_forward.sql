-- params: stream, from_version, limit
-- The scalar subquery does not depend on the row: SQLite evaluates it once.
SELECT position, stream, version, id, type, schema_version, data, metadata, recorded_at
FROM eventfold_events
WHERE stream = ?1 AND version >= ?2
  AND (SELECT deletion FROM eventfold_streams WHERE stream = ?1) IS NULL
ORDER BY version
LIMIT ?3
