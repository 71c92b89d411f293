-- Schema version 1 of the eventfold SQLite store. Each migration_N.sql runs in one
-- transaction, and PRAGMA user_version records the version a file has.
-- position: AUTOINCREMENT so a position is never reused, even after the newest
-- rows are deleted. Writers are serialised by SQLite, so positions follow
-- commit order and a tailing reader of read_all never skips an event.
CREATE TABLE IF NOT EXISTS eventfold_events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    stream         TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    id             BLOB    NOT NULL,
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    data           BLOB    NOT NULL,
    metadata       BLOB,
    recorded_at    INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS eventfold_events_stream_version
    ON eventfold_events (stream, version);
CREATE UNIQUE INDEX IF NOT EXISTS eventfold_events_id ON eventfold_events (id);
CREATE TABLE IF NOT EXISTS eventfold_streams (
    stream   TEXT PRIMARY KEY,
    metadata BLOB
) WITHOUT ROWID;
