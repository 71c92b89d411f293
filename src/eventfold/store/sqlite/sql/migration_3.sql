-- Schema version 3: subscription checkpoints (with a lease for competing
-- consumers) and dead letters of events a projection could not handle.
CREATE TABLE eventfold_checkpoints (
    name             TEXT    PRIMARY KEY,
    position         INTEGER NOT NULL DEFAULT 0,
    owner            TEXT,
    lease_expires_at INTEGER NOT NULL DEFAULT 0,
    updated_at       INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE eventfold_dead_letters (
    name        TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    event_id    BLOB    NOT NULL,
    stream      TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    type        TEXT    NOT NULL,
    error       TEXT    NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (name, position)
) WITHOUT ROWID;
-- Which version of a read model readers should use (a blue/green switch).
CREATE TABLE eventfold_projection_aliases (
    alias  TEXT PRIMARY KEY,
    target TEXT NOT NULL
) WITHOUT ROWID;
