"""Async runners as an asyncio service runs them: supervised tasks, cancellation, stop, flavours.

What only the async flavour has (a task cancelled, an event loop that must be
left with no task behind, a handler awaiting) is tested here; what both
flavours share is in the projections suite (eventfold.testing).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from eventfold import (
    AsyncCommandHandler,
    AsyncMemoryEventStore,
    AsyncSqliteEventStore,
    ConfigurationError,
    InvalidRequest,
    MemoryEventStore,
    RecordedEvent,
    StoreError,
    StoreTimeout,
)
from eventfold.processes import AsyncDispatch, AsyncProcessManager, Dispatch, ProcessManager
from eventfold.projections import (
    SKIP,
    AsyncProjectionRunner,
    Projection,
    ProjectionContext,
    ProjectionRunner,
    async_attach_inline,
    attach_inline,
)
from eventfold.store import AsyncEventStore
from eventfold.store.postgres import AsyncPostgresEventStore, async_migrate
from eventfold.testing._events import Deposited, Greet, welcome
from eventfold.testing._support import async_fetchall
from tests.support.pg import new_schema_name

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEventStore]:
    if request.param == "memory":
        async with AsyncMemoryEventStore() as memory:
            yield memory
    elif request.param == "sqlite":
        async with AsyncSqliteEventStore(tmp_path / "a.db", durability="off") as sqlite:
            yield sqlite
    else:
        url = request.getfixturevalue("pg_database")
        schema = new_schema_name()
        await async_migrate(url, schema=schema)
        async with AsyncPostgresEventStore(url, schema=schema, max_size=4) as postgres:
            yield postgres


class Counted:
    """Events handled per stream, a SQL table where there is SQL (``await ctx.execute``)."""

    def __init__(self) -> None:
        self.name = f"counted_{uuid.uuid4().hex[:10]}"
        self.memory: dict[str, int] = {}
        self.handled: list[int] = []
        self.gate: asyncio.Event | None = None  # the handler waits on it when set
        self.entered = asyncio.Event()  # a handler is running (and maybe waiting)

    def projection(self, **options: Any) -> Projection:
        return Projection(self.name, self.handle, setup=self.setup, **options)

    async def setup(self, ctx: ProjectionContext) -> None:
        if ctx.connection is not None:
            await ctx.execute(
                f"CREATE TABLE IF NOT EXISTS {self.name} (stream TEXT PRIMARY KEY, n BIGINT)"
            )

    async def handle(self, ctx: ProjectionContext, event: RecordedEvent) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self.handled.append(event.position)
        if ctx.connection is None:
            self.memory[event.stream] = self.memory.get(event.stream, 0) + 1
            return
        await ctx.execute(
            f"INSERT INTO {self.name} (stream, n) VALUES (?, 1) "
            f"ON CONFLICT (stream) DO UPDATE SET n = {self.name}.n + 1",
            (event.stream,),
        )

    async def read(self, store: AsyncEventStore) -> dict[str, int]:
        async with store.transaction() as tx:
            if tx.connection is None:
                return dict(self.memory)
            cursor = await tx.execute(f"SELECT stream, n FROM {self.name}")
            return {row[0]: int(row[1]) for row in await async_fetchall(cursor)}


async def counts(store: AsyncEventStore) -> dict[str, int]:
    result: dict[str, int] = {}
    async for event in store.read_all():
        result[event.stream] = result.get(event.stream, 0) + 1
    return result


def other_tasks() -> set[asyncio.Task[Any]]:
    """The tasks running besides this test's, but the connection pool's workers."""
    current = asyncio.current_task()
    return {
        task
        for task in asyncio.all_tasks()
        if task is not current
        and not task.done()
        and "psycopg_pool" not in getattr(task.get_coro(), "cr_code").co_filename  # noqa: B009
    }


# -- cancellation --------------------------------------------------------------------------


async def test_cancelling_run_forever_releases_the_lease_and_leaves_no_task(
    store: AsyncEventStore,
) -> None:
    counted = Counted()
    await store.last_position()  # the store's own tasks (a pool) are started by now
    before = other_tasks()
    runner = AsyncProjectionRunner(store, counted.projection(), lease_seconds=60)
    task = asyncio.create_task(runner.run_forever())
    last = await store.append("s-1", [Deposited(amount=1)])
    await store.wait_for(counted.name, last.position, timeout=30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert other_tasks() == before  # nothing of the runner is left running
    status = await runner.status()
    assert not status.running and status.position == last.position
    # The lease went with the task: another runner takes over at once.
    await store.append("s-2", [Deposited(amount=2)])
    successor = AsyncProjectionRunner(store, counted.projection(), lease_seconds=60)
    assert await successor.run_once() == 1
    assert await counted.read(store) == await counts(store)


async def test_a_task_cancelled_inside_a_batch_rolls_it_back(store: AsyncEventStore) -> None:
    for n in range(10):
        await store.append(f"s-{n % 2}", [Deposited(amount=n)])
    counted = Counted()
    counted.gate = asyncio.Event()  # never set: the handler hangs at its first event
    runner = AsyncProjectionRunner(store, counted.projection(batch_size=4))
    task = asyncio.create_task(runner.run_once())
    await counted.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await runner.status()).position == 0  # nothing committed
    await runner.release()
    counted.gate = None
    counted.handled.clear()
    assert await AsyncProjectionRunner(store, counted.projection(batch_size=4)).run_once() == 10
    assert await counted.read(store) == await counts(store)
    assert counted.handled == [e.position async for e in store.read_all()]  # each once


async def test_stop_ends_a_catch_up_after_the_batch_in_hand(store: AsyncEventStore) -> None:
    for n in range(60):
        await store.append(f"s-{n % 3}", [Deposited(amount=n)])
    counted = Counted()
    stop = asyncio.Event()
    projection = counted.projection(batch_size=10)
    inner = projection.handle

    async def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
        await inner(ctx, event)  # type: ignore[misc]
        if len(counted.handled) == 15:
            stop.set()  # as a SIGTERM handler would

    runner = AsyncProjectionRunner(store, Projection(projection.name, handle, setup=counted.setup))
    await runner.run_forever(stop)  # returns: stopped
    position = await runner.get_position()
    assert 15 <= len(counted.handled) < 60
    # What was handled is exactly what the checkpoint says: nothing lost, nothing doubled.
    assert counted.handled == [e.position async for e in store.read_all() if e.position <= position]
    assert sum((await counted.read(store)).values()) == len(counted.handled)


# -- flavours ---------------------------------------------------------------------------------


async def test_each_flavour_refuses_the_other(tmp_path: Path) -> None:
    async def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
        return None

    sync_store = MemoryEventStore()
    async_store = AsyncMemoryEventStore()
    with pytest.raises(ConfigurationError, match="async def"):
        ProjectionRunner(sync_store, Projection("p", handle))
    with pytest.raises(ConfigurationError, match="sync store"):
        ProjectionRunner(async_store, Projection("p", lambda ctx, event: None))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="async store"):
        AsyncProjectionRunner(sync_store, Projection("p", handle))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        attach_inline(async_store, Projection("p", lambda ctx, event: None))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        await async_attach_inline(sync_store, Projection("p", handle))  # type: ignore[arg-type]

    async def react(event: RecordedEvent) -> list[Dispatch]:
        return []

    with pytest.raises(ConfigurationError, match="AsyncProcessManager"):
        ProcessManager("pm", react)  # type: ignore[arg-type]


async def test_the_position_property_reads_nothing_on_an_async_runner(
    store: AsyncEventStore,
) -> None:
    await store.append("s", [Deposited(amount=1)])
    counted = Counted()
    await AsyncProjectionRunner(store, counted.projection()).run_once()
    fresh = AsyncProjectionRunner(store, counted.projection())
    with pytest.raises(InvalidRequest, match="get_position"):
        fresh.position  # noqa: B018 - the property is the test
    assert await fresh.get_position() == await store.last_position()
    assert fresh.position == await store.last_position()


async def test_an_async_process_manager_compensates_a_rejected_command(
    store: AsyncEventStore,
) -> None:
    handler = AsyncCommandHandler(store, welcome)

    async def react(event: RecordedEvent) -> list[AsyncDispatch]:
        # Greets "welcome-1" for each deposit: the second greeting is refused.
        return [AsyncDispatch(handler, "welcome-1", Greet(f"owner-{event.data.amount}"))]

    def on_rejected(
        event: RecordedEvent, dispatch: AsyncDispatch, error: Exception
    ) -> list[AsyncDispatch]:
        return [AsyncDispatch(handler, f"sorry-{event.data.amount}", Greet("sorry"))]

    manager = AsyncProcessManager(
        "greeter", react, types=["eventfold.testing.Deposited"], on_rejected=on_rejected
    )
    await store.append("acc", [Deposited(amount=1), Deposited(amount=2)])
    assert await manager.runner(store).run_once() == 2  # the deposits (greetings are not its type)
    assert [e.data.owner async for e in store.read("welcome-1")] == ["owner-1"]
    assert [e.data.owner async for e in store.read("sorry-2")] == ["sorry"]


async def test_an_inline_hook_that_waits_is_refused_where_the_append_cannot_wait(
    store: AsyncEventStore,
) -> None:
    async def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
        await asyncio.sleep(0)

    projection = Projection(f"waits-{uuid.uuid4().hex[:8]}", handle)
    await async_attach_inline(store, projection)
    if isinstance(store, AsyncPostgresEventStore):
        # On PostgreSQL the hook is awaited on the append's connection.
        await store.append("s", [Deposited(amount=1)])
        assert [e.data async for e in store.read("s")] == [Deposited(amount=1)]
        return
    with pytest.raises(InvalidRequest, match="inside the append"):
        await store.append("s", [Deposited(amount=1)])
    assert await store.last_position() == 0  # rolled back: nothing stored


# -- a restart of the database under a live async runner --------------------------------

RESTART = os.environ.get("EVENTFOLD_TEST_PG_RESTART")


@pytest.mark.slow
@pytest.mark.skipif(not RESTART, reason="set EVENTFOLD_TEST_PG_RESTART to restart the server")
async def test_an_async_runner_resumes_after_a_postgres_restart(pg_database: str) -> None:
    assert RESTART is not None
    schema = new_schema_name()
    await async_migrate(pg_database, schema=schema)
    async with AsyncPostgresEventStore(pg_database, schema=schema, max_size=4) as store:
        for n in range(30):
            await store.append(f"s-{n % 3}", [Deposited(amount=n)])
        counted = Counted()
        runner = AsyncProjectionRunner(store, counted.projection(), poll_interval=0.2)
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run_forever(stop))
        await store.wait_for(counted.name, await store.last_position(), timeout=30)
        await asyncio.to_thread(subprocess.run, shlex.split(RESTART), check=True, timeout=120)
        last = 0
        for n in range(30):
            while True:
                try:
                    last = (await store.append(f"s-{n % 3}", [Deposited(amount=n)])).position
                    break
                except StoreError as exc:  # pooled connections die with the server
                    assert exc.retryable
        await store.wait_for(counted.name, last, timeout=60)
        stop.set()
        await task
        assert await counted.read(store) == {"s-0": 20, "s-1": 20, "s-2": 20}
        assert counted.handled == [e.position async for e in store.read_all()]
        assert (await runner.status()).restarts == 0  # retried inside run(), not restarted


# -- one async SQLite store, several tasks -------------------------------------------------


async def test_runners_of_one_async_sqlite_store_take_turns(tmp_path: Path) -> None:
    # The async SQLite store runs transactions on one thread: two runners' SQL
    # batches (two tasks) used to meet there, the second refused as if nested.
    async with AsyncSqliteEventStore(tmp_path / "t.db", durability="off") as store:
        models = [Counted(), Counted()]
        runners = [AsyncProjectionRunner(store, m.projection(batch_size=3)) for m in models]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(runner.run_forever(stop)) for runner in runners]
        last = 0
        for n in range(60):
            last = (await store.append(f"s-{n % 4}", [Deposited(amount=n)])).position
        for model in models:
            await store.wait_for(model.name, last, timeout=30)
        stop.set()
        await asyncio.gather(*tasks)
        for runner, model in zip(runners, models, strict=True):
            assert (await runner.status()).restarts == 0
            assert await model.read(store) == await counts(store)


async def test_a_task_writing_inside_its_own_async_sqlite_transaction_is_refused_at_once(
    tmp_path: Path,
) -> None:
    async with AsyncSqliteEventStore(tmp_path / "t.db", busy_timeout=30) as store:
        async with store.transaction() as tx:
            await tx.append("s", [Deposited(amount=1)])
            with pytest.raises(StoreError, match="wait for itself"):
                await store.append("s", [Deposited(amount=2)])  # not the transaction's
            with pytest.raises(StoreError, match="wait for itself"):
                async with store.transaction():
                    pass
        assert [e.data async for e in store.read("s")] == [Deposited(amount=1)]


async def test_a_task_waiting_past_busy_timeout_for_another_tasks_transaction_times_out(
    tmp_path: Path,
) -> None:
    async with AsyncSqliteEventStore(tmp_path / "t.db", busy_timeout=0.1) as store:
        held, done = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with store.transaction() as tx:
                await tx.append("s", [Deposited(amount=1)])
                held.set()
                await done.wait()

        task = asyncio.create_task(holder(), name="slow-handler")
        await held.wait()
        with pytest.raises(StoreTimeout, match="slow-handler") as timeout:
            async with store.transaction():
                pass
        assert timeout.value.retryable
        done.set()
        await task
        async with store.transaction() as tx:  # its turn now
            await tx.append("s", [Deposited(amount=2)])
        assert len([e async for e in store.read("s")]) == 2


# -- what handlers return ---------------------------------------------------------------


class Sneaky:
    """An object whose __call__ is async: not an ``async def`` function, still async."""

    async def __call__(self, ctx: ProjectionContext, event: RecordedEvent) -> None:
        return None


@pytest.mark.parametrize("in_memory", [True, False])
async def test_the_sync_runner_refuses_an_awaitable_from_a_handler_whatever_the_policy(
    in_memory: bool,
) -> None:
    # Not awaited, the handler would do nothing at all: a silent, empty read model.
    store = MemoryEventStore()
    store.append("s", [Deposited(amount=1)])
    projection = Projection("sneaky", Sneaky(), in_memory=in_memory, on_error=SKIP)
    runner = ProjectionRunner(store, projection)
    with pytest.raises(ConfigurationError, match="AsyncProjectionRunner"):
        runner.run_once()
    assert runner.dead_letters() == []  # not the event's fault: no policy applied


async def test_a_plain_handler_returning_a_value_runs_on_the_async_runner(
    store: AsyncEventStore,
) -> None:
    await store.append("s", [Deposited(amount=1), Deposited(amount=2)])
    seen: list[int] = []

    def handle(ctx: ProjectionContext, event: RecordedEvent) -> int:
        seen.append(event.data.amount)
        return len(seen)  # a value, not an awaitable: ignored

    for in_memory in (True, False):
        name = f"valued-{in_memory}-{uuid.uuid4().hex[:6]}"
        projection = Projection(name, handle, in_memory=in_memory)  # type: ignore[arg-type]
        assert await AsyncProjectionRunner(store, projection).run_once() == 2
    assert seen == [1, 2, 1, 2]
