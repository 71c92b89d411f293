"""SQLite tells no one of a commit: followers poll, and commits from this process wake them.

Each test makes the polls' pauses (and the slices a stop is checked in) far
longer than its guard, so only the in-process signal can deliver the news in
time: without it, the guard fails. A last append wakes what was told to stop.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from eventfold import RecordedEvent
from eventfold.projections import AsyncProjectionRunner, Projection, ProjectionRunner
from eventfold.store import _base, _base_async, _checkpoints, _checkpoints_async
from eventfold.store.sqlite import AsyncSqliteEventStore, SqliteEventStore, _checkpoint_ops
from eventfold.testing._events import Deposited

GUARD = 20.0  # seconds: far below the pause the polls are given here
NEVER = 60.0  # the polls' pause in these tests (a regression fails, late)


@pytest.fixture
def slow_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (_checkpoint_ops, _base, _base_async):
        monkeypatch.setattr(module, "FIRST_POLL", NEVER)
    for module in (_checkpoints, _checkpoints_async):
        monkeypatch.setattr(module, "STOP_CHECK", NEVER)


def test_a_subscription_hears_of_a_commit_by_another_store_of_this_process(
    tmp_path: Path, slow_polls: None
) -> None:
    path = tmp_path / "news.db"
    with SqliteEventStore(path) as reader, SqliteEventStore(path) as writer:
        writer.append("a", [Deposited(amount=1)])
        stop = threading.Event()
        received: list[RecordedEvent] = []
        arrived = threading.Event()

        def follow() -> None:
            for event in reader.subscribe(poll_interval=NEVER, stop=stop):
                received.append(event)
                if len(received) == 2:
                    arrived.set()

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        writer.append("b", [Deposited(amount=2)])
        assert arrived.wait(GUARD), f"the news never came: {received}"
        stop.set()
        writer.append("c", [Deposited(amount=3)])
        thread.join(GUARD)
        assert not thread.is_alive()
        assert [e.stream for e in received][:2] == ["a", "b"]


def test_a_runner_is_woken_by_an_append_from_this_process(tmp_path: Path, slow_polls: None) -> None:
    path = tmp_path / "runner.db"
    seen: list[int] = []
    handled = threading.Condition()

    def handle(ctx: object, event: RecordedEvent) -> None:
        with handled:
            seen.append(event.data.amount)
            handled.notify_all()

    with SqliteEventStore(path) as store:
        runner = ProjectionRunner(store, Projection("news", handle, in_memory=True))
        runner.poll_interval = NEVER
        stop = threading.Event()
        thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
        thread.start()
        for amount in (1, 2, 3):
            store.append(f"s-{amount}", [Deposited(amount=amount)])
            with handled:
                assert handled.wait_for(lambda a=amount: a in seen, GUARD), seen
        stop.set()
        store.append("last", [Deposited(amount=4)])
        thread.join(GUARD)
        assert not thread.is_alive()
    assert seen[:3] == [1, 2, 3]


@pytest.mark.asyncio
async def test_an_async_runner_is_woken_by_an_append_of_a_sync_store_in_this_process(
    tmp_path: Path, slow_polls: None
) -> None:
    path = tmp_path / "async.db"
    seen: list[int] = []
    news = asyncio.Event()

    def handle(ctx: object, event: RecordedEvent) -> None:
        seen.append(event.data.amount)
        news.set()

    async with AsyncSqliteEventStore(path) as store:
        runner = AsyncProjectionRunner(store, Projection("news", handle, in_memory=True))
        runner.poll_interval = NEVER
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        with SqliteEventStore(path) as writer:
            for amount in (1, 2):
                news.clear()
                await asyncio.to_thread(writer.append, f"s-{amount}", [Deposited(amount=amount)])
                async with asyncio.timeout(GUARD):
                    await news.wait()
            stop.set()
            await asyncio.to_thread(writer.append, "last", [Deposited(amount=3)])
            async with asyncio.timeout(GUARD):
                await task
    assert seen[:2] == [1, 2]


def test_each_file_has_its_own_commits(tmp_path: Path) -> None:
    with (
        SqliteEventStore(tmp_path / "one.db") as one,
        SqliteEventStore(tmp_path / "one.db") as again,
        SqliteEventStore(tmp_path / "two.db") as two,
    ):
        before = two._db.commits.count
        one.append("a", [Deposited(amount=1)])
        assert one._db.commits is again._db.commits
        assert one._db.commits is not two._db.commits
        assert two._db.commits.count == before  # no news for another file
