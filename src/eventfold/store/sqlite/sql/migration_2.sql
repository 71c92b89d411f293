-- Schema version 2: stream lifecycle (soft/hard delete, truncation) and snapshots.
-- deletion and truncation hold JSON: who, why, when, hard, version.
ALTER TABLE eventfold_streams ADD COLUMN deletion BLOB;
ALTER TABLE eventfold_streams ADD COLUMN truncation BLOB;
ALTER TABLE eventfold_streams ADD COLUMN first_version INTEGER NOT NULL DEFAULT 1;
CREATE TABLE eventfold_snapshots (
    stream         TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    state_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    data           BLOB    NOT NULL,
    recorded_at    INTEGER NOT NULL,
    PRIMARY KEY (stream, version)
) WITHOUT ROWID;
