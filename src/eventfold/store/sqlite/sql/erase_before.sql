-- params: stream, before_version
DELETE FROM eventfold_events WHERE stream = ?1 AND version < ?2
