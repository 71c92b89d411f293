"""Every built-in store runs the checkpoints and projections suites, in both flavours."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from eventfold import (
    AsyncMemoryEventStore,
    AsyncSqliteEventStore,
    MemoryEventStore,
    SqliteEventStore,
)
from eventfold.store.postgres import (
    AsyncPostgresEventStore,
    PostgresEventStore,
    async_migrate,
    migrate,
)
from eventfold.testing import (
    AsyncCheckpointsSuite,
    AsyncProjectionsSuite,
    CheckpointsSuite,
    ProjectionsSuite,
)
from tests.support.pg import new_schema_name


class TestMemory(CheckpointsSuite, ProjectionsSuite):
    @pytest.fixture
    def store(self) -> Iterator[MemoryEventStore]:
        with MemoryEventStore() as store:
            yield store


class TestAsyncMemory(AsyncCheckpointsSuite, AsyncProjectionsSuite):
    @pytest_asyncio.fixture
    async def store(self) -> AsyncIterator[AsyncMemoryEventStore]:
        async with AsyncMemoryEventStore() as store:
            yield store


class TestSqlite(CheckpointsSuite, ProjectionsSuite):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SqliteEventStore]:
        with SqliteEventStore(tmp_path / "cp.db", durability="off") as store:
            yield store


class TestAsyncSqlite(AsyncCheckpointsSuite, AsyncProjectionsSuite):
    @pytest_asyncio.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[AsyncSqliteEventStore]:
        async with AsyncSqliteEventStore(tmp_path / "cp.db", durability="off") as store:
            yield store


class TestPostgres(CheckpointsSuite, ProjectionsSuite):
    @pytest.fixture
    def store(self, pg_database: str) -> Iterator[PostgresEventStore]:
        schema = new_schema_name()
        migrate(pg_database, schema=schema)
        with PostgresEventStore(pg_database, schema=schema, max_size=4) as store:
            yield store


class TestAsyncPostgres(AsyncCheckpointsSuite, AsyncProjectionsSuite):
    @pytest_asyncio.fixture
    async def store(self, pg_database: str) -> AsyncIterator[AsyncPostgresEventStore]:
        schema = new_schema_name()
        await async_migrate(pg_database, schema=schema)
        async with AsyncPostgresEventStore(pg_database, schema=schema, max_size=4) as store:
            yield store
