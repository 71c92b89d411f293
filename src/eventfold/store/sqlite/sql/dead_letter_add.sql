-- params: name, position, event_id, stream, version, type, error, recorded_at
INSERT OR REPLACE INTO eventfold_dead_letters
    (name, position, event_id, stream, version, type, error, recorded_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
