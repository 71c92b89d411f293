"""The PostgreSQL pieces the suites share: the scratch database, a schema per
contender, eventsourcing's settings and the raw contenders' events table."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager

try:
    import psycopg
    from psycopg import sql
except ImportError as exc:  # pragma: no cover - a setup problem, not a benchmark result
    raise SystemExit(
        "the PostgreSQL benchmarks need psycopg: pip install 'eventfold[postgres]'"
    ) from exc

# psycopg and sql too: a suite imports them from here, to get the hint above if missing
__all__ = [
    "DEFAULT_CONNINFO",
    "RAW_INSERT",
    "RAW_SCHEMA",
    "add_conninfo_argument",
    "conninfo",
    "create_schemas",
    "es_env",
    "psycopg",
    "schema_url",
    "scratch_database",
    "sql",
]

DEFAULT_CONNINFO = "postgresql://postgres@127.0.0.1:5432/postgres"

#: raw psycopg: the same columns and unique keys as eventfold's table
RAW_SCHEMA = """
CREATE TABLE events (
    position       bigserial PRIMARY KEY,
    stream         text      NOT NULL,
    version        bigint    NOT NULL,
    id             uuid      NOT NULL UNIQUE,
    type           text      NOT NULL,
    schema_version integer   NOT NULL,
    data           bytea     NOT NULL,
    metadata       bytea,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream, version)
)
"""
RAW_INSERT = (
    "INSERT INTO events (stream, version, id, type, schema_version, data) "
    "VALUES (%s, %s, %s, %s, 1, %s)"
)


def add_conninfo_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--conninfo",
        default=None,
        help=(
            "PostgreSQL server (a role that may CREATE DATABASE; default $EVENTFOLD_BENCH_POSTGRES"
            f" or {DEFAULT_CONNINFO}); a scratch database is made there"
        ),
    )


def conninfo(args: argparse.Namespace) -> str:
    return args.conninfo or os.environ.get("EVENTFOLD_BENCH_POSTGRES", DEFAULT_CONNINFO)


def _drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """A fresh database ``eventfold_bench_<pid>`` for the run, dropped at the end."""
    name = f"eventfold_bench_{os.getpid()}"
    _drop_database(admin_url, name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    finally:
        _drop_database(admin_url, name)


def create_schemas(url: str, *schemas: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def schema_url(url: str, schema: str) -> str:
    """``url`` with ``schema`` as the search path (the raw contenders' tables)."""
    return psycopg.conninfo.make_conninfo(url, options=f"-c search_path={schema}")


def es_env(url: str, schema: str, pool_size: int, *, create: bool = True) -> dict[str, str]:
    """eventsourcing's settings for a PostgreSQL schema of the database at ``url``.

    ``create=False`` for helper processes: the parent created the tables, and
    eight processes re-creating its insert function at once make PostgreSQL
    fail with "tuple concurrently updated".
    """
    params = psycopg.conninfo.conninfo_to_dict(url)
    return {
        "CREATE_TABLE": "y" if create else "n",
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(params.get("dbname", "postgres")),
        "POSTGRES_HOST": str(params.get("host", "127.0.0.1")),
        "POSTGRES_PORT": str(params.get("port", "5432")),
        "POSTGRES_USER": str(params.get("user", "postgres")),
        "POSTGRES_PASSWORD": str(params.get("password", "")),
        "POSTGRES_SCHEMA": schema,
        "POSTGRES_POOL_SIZE": str(pool_size),
    }
