-- The schema and its migration ledger. A script (several statements), run by
-- migrate() in one transaction after taking migrate_lock; idempotent.
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.schema_version (
    version    integer     PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
