"""The PostgreSQL driver, imported once: psycopg 3 and psycopg-pool (the extra)."""

from __future__ import annotations

try:
    import psycopg
    import psycopg_pool
    from psycopg import AsyncConnection, Connection, sql
    from psycopg import errors as pg_errors
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.errors import SerializationFailure, UniqueViolation
    from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "the PostgreSQL event store needs psycopg 3 and psycopg-pool: "
        "pip install 'eventfold[postgres]'"
    ) from exc

__all__ = [
    "AsyncConnection",
    "AsyncConnectionPool",
    "Connection",
    "ConnectionPool",
    "PoolTimeout",
    "SerializationFailure",
    "UniqueViolation",
    "conninfo_to_dict",
    "pg_errors",
    "psycopg",
    "psycopg_pool",
    "sql",
]
