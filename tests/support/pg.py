"""Shared helpers for tests against a real PostgreSQL server.

The server is named by ``EVENTFOLD_TEST_POSTGRES`` (a libpq conninfo for a
role allowed to create databases; default: the local server as ``postgres``).
Each test session creates its own uniquely named database and drops it at the
end, so concurrent sessions and other users of the server do not interfere.
When the server cannot be reached the tests are skipped on a developer
machine, but FAIL when the ``CI`` environment variable is set: a CI run that
silently skipped the PostgreSQL backend would prove nothing.
"""

from __future__ import annotations

import itertools
import os
import socket
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

ADMIN_URL = os.environ.get(
    "EVENTFOLD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
_schemas = itertools.count(1)


def require_server() -> None:
    """Fail (in CI) or skip (elsewhere) unless the PostgreSQL server answers."""
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        message = f"PostgreSQL test server {ADMIN_URL!r} is unreachable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def database_url(name: str) -> str:
    """The conninfo of database ``name`` on the test server."""
    return psycopg.conninfo.make_conninfo(ADMIN_URL, dbname=name)


def create_database(prefix: str = "eventfold_test") -> str:
    """Create a uniquely named empty database; return its name."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_database(name: str) -> None:
    """Drop database ``name``, disconnecting anyone still using it."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def new_schema_name() -> str:
    """A schema name not used before in this test session."""
    return f"t{next(_schemas)}_{uuid.uuid4().hex[:6]}"


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of the call)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The conninfo of a fresh database, created for this test session."""
    require_server()
    name = create_database()
    try:
        yield database_url(name)
    finally:
        drop_database(name)
