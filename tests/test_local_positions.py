"""wait_for beside a runner of the same store: its word after each commit, while its lease lasts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eventfold import ProjectionBehind, RecordedEvent
from eventfold.projections import Projection, ProjectionContext, ProjectionRunner
from eventfold.store import EventStore
from eventfold.store._local import LocalPositions
from eventfold.store.postgres import PostgresEventStore, migrate
from eventfold.store.sqlite import SqliteEventStore
from eventfold.testing._events import Deposited
from tests.support.pg import new_schema_name

GUARD = 20.0


def test_without_a_local_holder_a_wait_returns_none_at_once() -> None:
    local = LocalPositions()
    started = time.monotonic()
    assert local.wait("p", 5, timeout=GUARD) is None
    assert time.monotonic() - started < GUARD / 2  # it did not wait for the timeout


def test_a_move_past_the_position_ends_the_wait_and_a_let_go_hands_it_back() -> None:
    local = LocalPositions()
    local.moved("p", "a", 3, time.monotonic() + 60)
    assert local.wait("p", 3, timeout=0) == 3  # passed already
    results: list[int | None] = []
    waiter = threading.Thread(target=lambda: results.append(local.wait("p", 7, GUARD)))
    waiter.start()
    local.moved("p", "a", 5, time.monotonic() + 60)  # not yet
    local.moved("p", "a", 8, time.monotonic() + 60)
    waiter.join(GUARD)
    assert results == [8]
    waiter = threading.Thread(target=lambda: results.append(local.wait("p", 20, GUARD)))
    waiter.start()
    local.let_go("p", "someone else")  # not the holder: nothing changes
    local.let_go("p", "a")
    waiter.join(GUARD)
    assert results == [8, None]  # back to the database


def test_an_expired_lease_is_not_believed() -> None:
    local = LocalPositions()
    local.moved("p", "a", 9, time.monotonic() - 1)
    assert local.wait("p", 1, timeout=GUARD) is None


@pytest.mark.asyncio
async def test_an_async_wait_hears_a_move_from_another_thread() -> None:
    local = LocalPositions()
    local.moved("p", "a", 1, time.monotonic() + 60)
    waiting = asyncio.create_task(local.async_wait("p", 4, GUARD))
    await asyncio.sleep(0)
    mover = threading.Thread(target=local.moved, args=("p", "a", 4, time.monotonic() + 60))
    mover.start()
    assert await asyncio.wait_for(waiting, GUARD) == 4
    mover.join(GUARD)
    waiting = asyncio.create_task(local.async_wait("p", 9, GUARD))
    await asyncio.sleep(0)
    threading.Thread(target=local.let_go, args=("p", "a")).start()
    assert await asyncio.wait_for(waiting, GUARD) is None


@pytest.fixture(params=["sqlite", "postgres"])
def two_stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], EventStore]]:
    """Opens stores on one database: each a process of its own, as far as waits go."""
    opened: list[EventStore] = []
    if request.param == "sqlite":
        path = tmp_path / "local.db"

        def make() -> EventStore:
            opened.append(SqliteEventStore(path))
            return opened[-1]
    else:
        url = request.getfixturevalue("pg_database")
        schema = new_schema_name()
        migrate(url, schema=schema)

        def make() -> EventStore:
            opened.append(PostgresEventStore(url, schema=schema))
            return opened[-1]

    yield make
    for store in opened:
        store.close()


def counter() -> Projection:
    def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
        ctx.execute("SELECT 1")

    return Projection("counted", handle)


def test_a_wait_beside_the_runner_is_answered_by_it(two_stores: Callable[[], EventStore]) -> None:
    store = two_stores()
    local = store.checkpoints().local_positions  # type: ignore[attr-defined]
    runner = ProjectionRunner(store, counter(), lease_seconds=60)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    answered: list[int | None] = []
    spy = local.wait

    def wait(name: str, position: int, timeout: float) -> int | None:
        answered.append(spy(name, position, timeout))
        return answered[-1]

    local.wait = wait
    try:
        for n in range(5):
            result = store.append("s", [Deposited(amount=n)])
            assert store.wait_for("counted", result.position, timeout=GUARD) >= result.position
    finally:
        stop.set()
        thread.join(GUARD)
    # Answered by the runner's word (the first may come before it held the lease).
    assert len(answered) == 5 and all(a is not None for a in answered[1:])


def test_when_the_local_runner_lets_go_the_wait_goes_on_in_the_database(
    two_stores: Callable[[], EventStore],
) -> None:
    here, elsewhere = two_stores(), two_stores()
    first = here.append("s", [Deposited(amount=1)])
    runner = ProjectionRunner(here, counter(), lease_seconds=60)
    assert runner.run_once() == 1  # holds the lease for a minute
    second = here.append("s", [Deposited(amount=2)])
    reached: list[int | BaseException] = []

    def wait() -> None:
        try:
            reached.append(here.wait_for("counted", second.position, timeout=GUARD))
        except BaseException as exc:
            reached.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    runner.release()  # the lease goes: the local word no longer covers the checkpoint
    other = ProjectionRunner(elsewhere, counter(), lease_seconds=60)
    assert other.run_once() == 1  # another process moves it
    # Well before its own timeout: it did not wait out the local holder's lease.
    waiter.join(GUARD / 2)
    assert not waiter.is_alive(), "the wait trusted a runner that had let go"
    assert reached and reached[0] == second.position > first.position
    with pytest.raises(ProjectionBehind):
        here.wait_for("counted", second.position + 10**6, timeout=0.05)
