-- Schema version 1. A script (several statements) run by migrate() in the
-- migration transaction.
--
-- Global order without a global lock: every row records the id of the
-- transaction that wrote it (tx) and a number from a sequence (seq). Readers
-- of the global log only expose rows whose transaction is older than the
-- oldest transaction still running (the xmin of their snapshot), ordered by
-- (tx, seq); such rows are final, and every row committed later has a larger
-- tx. See docs/postgres.md for the trade-off.
CREATE TABLE {schema}.events (
    tx             xid8        NOT NULL DEFAULT pg_current_xact_id(),
    seq            bigserial   NOT NULL,
    stream         text        NOT NULL,
    version        bigint      NOT NULL,
    id             uuid        NOT NULL,
    type           text        NOT NULL,
    schema_version integer     NOT NULL,
    data           bytea       NOT NULL,
    metadata       bytea,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_pkey PRIMARY KEY (tx, seq),
    CONSTRAINT events_stream_version UNIQUE (stream, version),
    CONSTRAINT events_id UNIQUE (id),
    CONSTRAINT events_version_positive CHECK (version > 0)
);
CREATE TABLE {schema}.streams (
    stream   text PRIMARY KEY,
    metadata bytea
);
