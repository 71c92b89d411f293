"""kill -9 a projection process at many points while writers run: no effect lost or doubled.

The read model counts events per stream in a SQL table of the event store's
own database. A projection process kills itself (SIGKILL, no cleanup) while
handling its N-th event, for 20 different N: inside a batch's transaction,
at its first event, right after a commit. Meanwhile a writer process keeps
appending. After the last crash a clean run catches up, and the table must
equal the counts taken from the log itself: every event counted exactly once.
Both flavours: the sync runner, and the async runner with an ``async def``
handler on the async store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
import shlex
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventfold import ANY, AsyncSqliteEventStore, SqliteEventStore, StoreError
from eventfold.projections import (
    AsyncProjectionRunner,
    Projection,
    ProjectionContext,
    ProjectionRunner,
)
from eventfold.store import AsyncEventStore, EventStore
from eventfold.store.postgres import AsyncPostgresEventStore, PostgresEventStore, migrate
from eventfold.store.postgres import _store as sync_postgres
from eventfold.testing._events import Deposited, Opened
from tests.support.pg import new_schema_name

CTX = multiprocessing.get_context("spawn")
KILL_POINTS = [1, 2, 3, 5, 7, 8, 9, 11, 13, 14, 15, 17, 19, 22, 25, 28, 29, 31, 37, 43]
BATCH = 7  # kill points land at every offset within a batch
WRITER_EVENTS = 600
TABLE = "crash_counts"
OWNER = "projection-host-1"


def _sql(conn: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
    if isinstance(conn, sqlite3.Connection):
        return conn.execute(sql, params)
    return conn.execute(sql.replace("?", "%s"), params)


def counting_projection(kill_at: int | None) -> Projection:
    handled = 0

    def setup(ctx: ProjectionContext) -> None:
        _sql(
            ctx.connection,
            f"CREATE TABLE IF NOT EXISTS {TABLE} (stream TEXT PRIMARY KEY, n BIGINT NOT NULL)",
        )

    def handle(ctx: ProjectionContext, event: Any) -> None:
        nonlocal handled
        handled += 1
        _sql(
            ctx.connection,
            f"INSERT INTO {TABLE} (stream, n) VALUES (?, 1) "
            f"ON CONFLICT (stream) DO UPDATE SET n = {TABLE}.n + 1",
            (event.stream,),
        )
        if handled == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    return Projection("crash-counts", handle, setup=setup, batch_size=BATCH)


def async_counting_projection(kill_at: int | None) -> Projection:
    """The same read model with ``async def`` handlers, for the async runner."""
    handled = 0

    async def setup(ctx: ProjectionContext) -> None:
        await ctx.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (stream TEXT PRIMARY KEY, n BIGINT NOT NULL)"
        )

    async def handle(ctx: ProjectionContext, event: Any) -> None:
        nonlocal handled
        handled += 1
        await ctx.execute(
            f"INSERT INTO {TABLE} (stream, n) VALUES (?, 1) "
            f"ON CONFLICT (stream) DO UPDATE SET n = {TABLE}.n + 1",
            (event.stream,),
        )
        if handled == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    return Projection("crash-counts", handle, setup=setup, batch_size=BATCH)


def open_store(kind: str, where: str, schema: str) -> EventStore:
    if kind == "sqlite":
        return SqliteEventStore(where, durability="normal", busy_timeout=30)
    return PostgresEventStore(where, schema=schema, max_size=2)


def open_async_store(kind: str, where: str, schema: str) -> AsyncEventStore:
    if kind == "sqlite":
        return AsyncSqliteEventStore(where, durability="normal", busy_timeout=30)
    return AsyncPostgresEventStore(where, schema=schema, max_size=2)


def projection_process(kind: str, where: str, schema: str, kill_at: int, flavour: str) -> None:
    # The restarted process has the same identity, so it resumes at once
    # instead of waiting for the dead one's lease to run out.
    if flavour == "async":
        asyncio.run(async_projection_run(kind, where, schema, kill_at))
        return
    with open_store(kind, where, schema) as store:
        ProjectionRunner(store, counting_projection(kill_at), owner=OWNER).run_once()


async def async_projection_run(kind: str, where: str, schema: str, kill_at: int) -> None:
    async with open_async_store(kind, where, schema) as store:
        projection = async_counting_projection(kill_at)
        await AsyncProjectionRunner(store, projection, owner=OWNER).run_once()


def writer_process(kind: str, where: str, schema: str) -> None:
    with open_store(kind, where, schema) as store:
        for i in range(WRITER_EVENTS):
            store.append(f"s-{i % 11}", [Deposited(amount=i)], expected=ANY)


def read_counts(store: EventStore) -> dict[str, int]:
    if isinstance(store, SqliteEventStore):
        with store._db.write_transaction() as conn:
            return dict(conn.execute(f"SELECT stream, n FROM {TABLE}").fetchall())
    with store.pool.connection() as conn:  # type: ignore[attr-defined]
        return dict(conn.execute(f"SELECT stream, n FROM {TABLE}").fetchall())


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, str]:
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "crash.db"), ""
    url = request.getfixturevalue("pg_database")
    schema = new_schema_name()
    migrate(url, schema=schema)
    # The read model table lives in the test's own schema.
    return "postgres", f"{url} options='-c search_path={schema}'", schema


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_kill_9_at_twenty_points_loses_and_doubles_nothing(
    target: tuple[str, str, str], flavour: str
) -> None:
    kind, where, schema = target
    with open_store(kind, where, schema) as store:
        for i in range(200):
            store.append(f"s-{i % 13}", [Deposited(amount=i)])
    writer = CTX.Process(target=writer_process, args=(kind, where, schema))
    writer.start()
    exit_codes = []
    for kill_at in KILL_POINTS:
        crashing = CTX.Process(
            target=projection_process, args=(kind, where, schema, kill_at, flavour)
        )
        crashing.start()
        crashing.join(60)
        exit_codes.append(crashing.exitcode)
    writer.join(120)
    assert writer.exitcode == 0
    # Each process died by SIGKILL at its point (none finished, none failed otherwise).
    assert exit_codes == [-signal.SIGKILL] * len(KILL_POINTS)
    with open_store(kind, where, schema) as store:
        final = ProjectionRunner(store, counting_projection(None), owner=OWNER)
        final.run_once()
        expected: dict[str, int] = {}
        for event in store.read_all():
            expected[event.stream] = expected.get(event.stream, 0) + 1
        assert sum(expected.values()) == 200 + WRITER_EVENTS
        assert read_counts(store) == expected
        assert final.position == store.last_position()


RESTART = os.environ.get("EVENTFOLD_TEST_PG_RESTART")


@contextlib.contextmanager
def running(runner: ProjectionRunner, *wake: threading.Event) -> Iterator[list[BaseException]]:
    """Run ``runner.run`` in a thread; yields its failures (which also set the ``wake`` events)."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            runner.run(stop)
        except BaseException as exc:
            failures.append(exc)
            for event in wake:
                event.set()

    worker = threading.Thread(target=run)
    worker.start()
    try:
        yield failures
    finally:
        stop.set()
        worker.join(60)
    assert not worker.is_alive()


def restart_postgres() -> None:
    assert RESTART is not None
    subprocess.run(shlex.split(RESTART), check=True, timeout=120)


def append_retrying(store: EventStore, stream: str, event: Any) -> int:
    """Append one event, retrying while pooled connections die with the restarted server."""
    while True:
        try:
            return store.append(stream, [event]).position
        except StoreError as exc:
            assert exc.retryable


@pytest.mark.slow
@pytest.mark.skipif(not RESTART, reason="set EVENTFOLD_TEST_PG_RESTART to restart the server")
def test_projection_resumes_after_a_postgres_restart(pg_database: str) -> None:
    schema = new_schema_name()
    migrate(pg_database, schema=schema)
    where = f"{pg_database} options='-c search_path={schema}'"
    delivered = threading.Event()
    with open_store("postgres", where, schema) as store:
        before = [store.append(f"s-{i % 3}", [Deposited(amount=i)]) for i in range(30)]
        projection = counting_projection(None)
        seen: set[int] = set()
        inner = projection.handle

        def handle(ctx: ProjectionContext, event: Any) -> None:
            inner(ctx, event)
            seen.add(event.position)
            if len(seen) == 60:  # the 30 events from before and the 30 from after
                delivered.set()

        runner = ProjectionRunner(
            store, dataclasses.replace(projection, handle=handle), poll_interval=0.2
        )
        with running(runner, delivered) as failures:
            restart_postgres()
            after = 0
            for i in range(30):
                after = append_retrying(store, f"s-{i % 3}", Deposited(amount=i))
            assert delivered.wait(60), "the projection did not resume after the restart"
        assert failures == []
        assert before[-1].position < after
        assert read_counts(store) == {"s-0": 20, "s-1": 20, "s-2": 20}


@pytest.mark.slow
@pytest.mark.skipif(not RESTART, reason="set EVENTFOLD_TEST_PG_RESTART to restart the server")
def test_a_streamed_in_memory_catch_up_survives_a_postgres_restart(
    pg_database: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No time bound on a streamed statement: the paused one is still open when
    # the server goes down (otherwise the runner would start a new one first).
    monkeypatch.setattr(sync_postgres, "_STREAM_SECONDS", 3600.0)
    schema = new_schema_name()
    migrate(pg_database, schema=schema)
    with PostgresEventStore(pg_database, schema=schema, max_size=4) as store:
        # 10,500 events of 8 kB, read in pages of 50: a streamed statement of
        # 10,000 rows (80 MB) is far more than socket buffers hold, so the
        # server is still sending it when it goes down.
        for start in range(0, 10_500, 500):
            store.append(
                f"s-{start // 500 % 3}", [Opened(owner=f"{n:08}" * 1_000) for n in range(500)]
            )
        log = [e.position for e in store.read_all()]
        seen: list[int] = []
        paused, restarted, reached = threading.Event(), threading.Event(), threading.Event()

        def handle(ctx: ProjectionContext, event: Any) -> None:
            if len(seen) == 1_000 and not restarted.is_set():
                # Early in the first streamed statement: hold still while
                # the server restarts.
                paused.set()
                restarted.wait(120)
            seen.append(event.position)
            if event.stream == "after":
                reached.set()

        projection = Projection("streamed", handle, batch_size=50, in_memory=True)
        runner = ProjectionRunner(store, projection, poll_interval=0.2)
        with running(runner, paused, reached) as failures:
            assert paused.wait(60)
            restart_postgres()
            restarted.set()
            last = append_retrying(store, "after", Deposited(amount=1))
            assert reached.wait(60), "the projection did not resume after the restart"
        assert failures == []
        assert seen == [*log, last]  # every event once, in log order
        # The runner met the restart inside the stream, and retried.
        assert any(
            r.name == "eventfold.projections" and "cannot reach PostgreSQL" in r.getMessage()
            for r in caplog.records
        )
