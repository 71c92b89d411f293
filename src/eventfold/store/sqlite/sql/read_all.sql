-- params: after, limit
SELECT position, stream, version, id, type, schema_version, data, metadata, recorded_at
FROM eventfold_events
WHERE position > ?1
  -- The EXISTS, computed once per statement, spares each row the NOT IN
  -- probe while no stream is deleted (the usual case).
  AND (NOT EXISTS (SELECT 1 FROM eventfold_streams WHERE deletion IS NOT NULL)
       OR stream NOT IN (SELECT stream FROM eventfold_streams WHERE deletion IS NOT NULL))
ORDER BY position
LIMIT ?2
