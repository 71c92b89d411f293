-- params: stream
SELECT coalesce(max(version), 0) FROM eventfold_events WHERE stream = ?
