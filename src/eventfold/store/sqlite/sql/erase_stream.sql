-- params: stream
DELETE FROM eventfold_events WHERE stream = ?1
