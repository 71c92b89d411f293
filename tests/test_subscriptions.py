"""store.subscribe(): catch up, then wait for news without spinning, on every backend."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from eventfold import AsyncMemoryEventStore, AsyncSqliteEventStore, RecordedEvent
from eventfold.store import AsyncEventStore, EventStore
from eventfold.testing import run_threads
from eventfold.testing._events import Deposited, Withdrawn
from tests.support.calls import count_calls


def test_a_blocked_subscriber_gets_each_new_event_once_in_order(any_store: EventStore) -> None:
    any_store.append("a", [Deposited(amount=0)])
    subscription = any_store.subscribe(poll_interval=30)
    received: list[RecordedEvent] = [next(subscription)]
    finished: list[str] = []

    def write(writer: str) -> None:
        try:
            for n in range(20):
                any_store.append(f"{writer}-{n % 3}", [Deposited(amount=n)])
        finally:
            finished.append(writer)

    def follow() -> None:
        # Blocks in the subscription's wait whenever it is ahead of the writers.
        while len(received) < 1 + 3 * 20:
            received.append(next(subscription))

    run_threads([follow] + [lambda w=w: write(w) for w in ("x", "y", "z")])
    subscription.close()
    assert [e.position for e in received] == [e.position for e in any_store.read_all()]


def test_an_idle_subscriber_does_not_spin_past_events_it_skips(any_store: EventStore) -> None:
    any_store.append("acc-1", [Deposited(amount=1)])
    any_store.append("other", [Withdrawn(amount=1)])  # the log ends with skipped events
    subscription = any_store.subscribe(
        types=["eventfold.testing.Deposited"], stream_prefix="acc-", poll_interval=30
    )
    assert next(subscription).stream == "acc-1"
    reads = count_calls(any_store, "_read_all_page")
    got: list[RecordedEvent] = []
    # A daemon: should the subscriber spin forever, the test still ends.
    waiting = threading.Thread(target=lambda: got.append(next(subscription)), daemon=True)
    waiting.start()
    # An idle moment: a subscriber woken at once by the skipped events would
    # read the log thousands of times here (a poll interval of 30 s: none).
    waiting.join(0.3)
    assert waiting.is_alive() and len(reads) <= 2
    latest = any_store.append("acc-2", [Deposited(amount=2)])
    waiting.join(10)
    assert not waiting.is_alive()
    assert [(e.stream, e.position) for e in got] == [("acc-2", latest.position)]
    subscription.close()


@pytest_asyncio.fixture(params=["memory", "sqlite"])
async def async_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[AsyncEventStore]:
    if request.param == "memory":
        yield AsyncMemoryEventStore()
    else:
        store = AsyncSqliteEventStore(tmp_path / "events.db", durability="off")
        yield store
        await store.close()


@pytest.mark.asyncio
async def test_an_async_subscriber_waits_without_blocking_the_loop(
    async_store: AsyncEventStore,
) -> None:
    await async_store.append("s", [Deposited(amount=1)])
    subscription = async_store.subscribe(poll_interval=30)
    assert (await asyncio.wait_for(subscription.__anext__(), 10)).data == Deposited(amount=1)
    pending = asyncio.ensure_future(subscription.__anext__())
    await asyncio.sleep(0)  # let the subscriber start waiting (the loop stays free)
    assert not pending.done()
    latest = await async_store.append("t", [Deposited(amount=2)])
    live = await asyncio.wait_for(pending, 10)
    assert (live.stream, live.position) == ("t", latest.position)
    await subscription.aclose()
