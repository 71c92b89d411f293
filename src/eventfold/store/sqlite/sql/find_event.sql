-- params: id
SELECT position, stream, version, id, type, schema_version, data, metadata, recorded_at
FROM eventfold_events
WHERE id = ?1
  AND stream NOT IN (SELECT stream FROM eventfold_streams WHERE deletion IS NOT NULL)
