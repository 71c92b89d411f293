"""eventfold's pytest plugin: store fixtures and a controlled clock.

Installed with eventfold (a ``pytest11`` entry point), it only adds
fixtures, all named ``eventfold_*``; nothing runs unless a test asks:

* ``eventfold_memory_store``, ``eventfold_sqlite_store`` (a file in the
  test's ``tmp_path``) and ``eventfold_postgres_store`` (in a schema of its
  own, dropped afterwards). The PostgreSQL server is a libpq conninfo from
  ``--eventfold-postgres``, the ``eventfold_postgres`` ini option or the
  ``EVENTFOLD_TEST_POSTGRES`` environment variable; without one, or when
  the server does not answer, the test is skipped, and fails instead when
  the ``CI`` environment variable is set (a CI run that skipped its database
  proves nothing). Needs ``eventfold[postgres]``.
* ``eventfold_clock``: a :class:`~eventfold.testing.ManualClock` in use for
  the test (times and event ids the same on every run).

The given/when/then helpers (``DeciderSpec``, ``ProjectionSpec``,
``ProcessSpec``) are in :mod:`eventfold.testing`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventfold.store.memory import MemoryEventStore
from eventfold.store.sqlite import SqliteEventStore
from eventfold.testing.clock import ManualClock

__all__ = [
    "eventfold_clock",
    "eventfold_memory_store",
    "eventfold_postgres_store",
    "eventfold_sqlite_store",
]

_ENVIRONMENT = "EVENTFOLD_TEST_POSTGRES"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("eventfold")
    group.addoption(
        "--eventfold-postgres",
        default=None,
        metavar="CONNINFO",
        help=f"the PostgreSQL server for eventfold_postgres_store (or ${_ENVIRONMENT})",
    )
    parser.addini("eventfold_postgres", "the PostgreSQL server for eventfold_postgres_store")


@pytest.fixture
def eventfold_clock() -> Iterator[ManualClock]:
    """Time that moves only when told, and seeded event ids, for this test."""
    with ManualClock() as clock:
        yield clock


@pytest.fixture
def eventfold_memory_store() -> Iterator[MemoryEventStore]:
    """An empty in-memory store."""
    with MemoryEventStore() as store:
        yield store


@pytest.fixture
def eventfold_sqlite_store(tmp_path: Path) -> Iterator[SqliteEventStore]:
    """An empty SQLite store in a file of the test's own directory."""
    with SqliteEventStore(tmp_path / "eventfold.db") as store:
        yield store


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
def eventfold_postgres_store(request: pytest.FixtureRequest) -> Iterator[Any]:
    """An empty PostgreSQL store in a new schema, dropped after the test."""
    conninfo: str = (
        request.config.getoption("--eventfold-postgres")
        or request.config.getini("eventfold_postgres")
        or os.environ.get(_ENVIRONMENT, "")
    )
    if not conninfo:
        _unavailable(
            f"eventfold_postgres_store needs a server: set {_ENVIRONMENT}, "
            "--eventfold-postgres or the eventfold_postgres ini option"
        )
    try:
        from eventfold.store.postgres import PostgresEventStore, migrate  # noqa: PLC0415
    except ImportError:
        _unavailable("eventfold_postgres_store needs pip install 'eventfold[postgres]'")
    schema = f"eventfold_test_{uuid.uuid4().hex[:12]}"
    try:
        migrate(conninfo, schema=schema)
    except Exception as exc:  # the server is down, or the conninfo is wrong
        _unavailable(f"PostgreSQL {conninfo!r} is unavailable: {exc}")
    with PostgresEventStore(conninfo, schema=schema) as store:
        try:
            yield store
        finally:
            # The name is ours (letters, digits, underscores): no quoting needed.
            with store.transaction() as tx:
                tx.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
