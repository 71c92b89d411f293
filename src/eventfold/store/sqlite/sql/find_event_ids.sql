-- params: id
SELECT stream, version, position FROM eventfold_events WHERE id = ?
