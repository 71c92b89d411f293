"""Shared fixtures: hypothesis profiles, the PostgreSQL test database, any store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from eventfold import MemoryEventStore, SqliteEventStore
from eventfold.store import EventStore
from eventfold.store.postgres import PostgresEventStore, migrate
from tests.support.pg import new_schema_name, pg_database

__all__ = ["pg_database"]  # the session fixture, used by name


def pytest_configure(config: pytest.Config) -> None:
    # Keep hypothesis bounded and deterministic in CI.
    settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
    settings.register_profile("dev", max_examples=25, deadline=None)
    # HYPOTHESIS_PROFILE=fuzz for a long search on a developer machine.
    settings.register_profile("fuzz", max_examples=3000, deadline=None)
    default = "ci" if os.environ.get("CI") else "dev"
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", default))


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    """A fresh, empty store of each backend in turn."""
    if request.param == "memory":
        yield MemoryEventStore()
    elif request.param == "sqlite":
        with SqliteEventStore(tmp_path / "events.db", durability="off") as sqlite:
            yield sqlite
    else:
        url = request.getfixturevalue("pg_database")
        schema = new_schema_name()
        migrate(url, schema=schema)
        with PostgresEventStore(url, schema=schema, max_size=4) as postgres:
            yield postgres
