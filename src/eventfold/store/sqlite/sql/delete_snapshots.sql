-- params: stream (or NULL), state_type (or NULL), keep_schema_version (or NULL)
DELETE FROM eventfold_snapshots
WHERE (?1 IS NULL OR stream = ?1)
  AND (?2 IS NULL OR state_type = ?2)
  AND (?3 IS NULL OR schema_version <> ?3)
