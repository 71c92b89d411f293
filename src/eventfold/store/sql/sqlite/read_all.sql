-- params: after, limit
SELECT position, stream, version, id, type, schema_version, data, metadata, recorded_at
FROM eventfold_events
WHERE position > ?1
  AND stream NOT IN (SELECT stream FROM eventfold_streams WHERE deletion IS NOT NULL)
ORDER BY position
LIMIT ?2
