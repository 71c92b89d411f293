-- Schema version 3: subscription checkpoints (with a lease for competing
-- consumers) and dead letters. Positions are (tx << 64) | seq, beyond bigint:
-- numeric keeps them exact.
CREATE TABLE {schema}.checkpoints (
    name          text        PRIMARY KEY,
    position      numeric(40) NOT NULL DEFAULT 0,
    owner         text,
    lease_expires timestamptz NOT NULL DEFAULT '-infinity',
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {schema}.dead_letters (
    name        text        NOT NULL,
    position    numeric(40) NOT NULL,
    event_id    uuid        NOT NULL,
    stream      text        NOT NULL,
    version     bigint      NOT NULL,
    type        text        NOT NULL,
    error       text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, position)
);
-- Which version of a read model readers should use (a blue/green switch).
CREATE TABLE {schema}.projection_aliases (
    alias  text PRIMARY KEY,
    target text NOT NULL
);
