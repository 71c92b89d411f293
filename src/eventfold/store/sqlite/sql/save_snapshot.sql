-- params: stream, version, state_type, schema_version, data, recorded_at
INSERT OR REPLACE INTO eventfold_snapshots
    (stream, version, state_type, schema_version, data, recorded_at)
VALUES (?, ?, ?, ?, ?, ?)
