-- params: stream, version, id, type, schema_version, data, metadata, recorded_at
INSERT INTO eventfold_events
    (stream, version, id, type, schema_version, data, metadata, recorded_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
