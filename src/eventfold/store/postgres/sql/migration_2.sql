-- Schema version 2: stream lifecycle (soft/hard delete, truncation) and snapshots.
-- deletion and truncation hold JSON: who, why, when, hard, version.
ALTER TABLE {schema}.streams ADD COLUMN deletion bytea, ADD COLUMN truncation bytea;
-- Readers exclude deleted streams: this partial index keeps that set small to scan.
CREATE INDEX streams_deleted ON {schema}.streams (stream) WHERE deletion IS NOT NULL;
CREATE TABLE {schema}.snapshots (
    stream         text        NOT NULL,
    version        bigint      NOT NULL,
    state_type     text        NOT NULL,
    schema_version integer     NOT NULL,
    data           bytea       NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, version)
);
