-- params: name
SELECT position, event_id, stream, version, type, error, recorded_at
FROM eventfold_dead_letters WHERE name = ?1 ORDER BY position
