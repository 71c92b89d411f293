"""Projections under operations: stop within one batch, resets that respect a live
runner, lost leases back to standby, supervised restarts, a busy handler in the status."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from eventfold import MemoryEventStore, RecordedEvent
from eventfold.projections import (
    LeaseHeld,
    Projection,
    ProjectionContext,
    ProjectionRunner,
)
from eventfold.store import EventStore
from eventfold.testing._events import Deposited
from tests.test_projections import Balances

KINDS = ["sql", "in_memory", "external"]


@pytest.fixture
def store(any_store: EventStore) -> Iterator[EventStore]:
    yield any_store


def backlog(store: EventStore, events: int) -> list[int]:
    """``events`` deposits of 1 over 10 accounts, 10 per append; their positions."""
    for n in range(events // 10):
        store.append(f"acc-{n % 10}", [Deposited(amount=1)] * 10)
    return [e.position for e in store.read_all()]


def wait_until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    """Poll ``condition`` (a synchronisation point, not a delay) until true or fail."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.005)


class Counted:
    """A projection of each kind counting events, which sets ``stop`` at the n-th."""

    def __init__(self, store: EventStore, kind: str, stop_at: int | None = None) -> None:
        self.balances = Balances()
        self.kind = kind
        self.stop = threading.Event()
        self.stop_at = stop_at
        self.handled = 0
        self.sql = kind == "sql" and not isinstance(store, MemoryEventStore)
        self.store = store

    def handle(self, ctx: ProjectionContext, event: RecordedEvent) -> None:
        self.handled += 1
        if self.sql:
            self.balances.handle(ctx, event)
        if self.stop_at is not None and self.handled == self.stop_at:
            self.stop.set()  # a SIGTERM arriving while this event is handled

    def projection(self, **options: Any) -> Projection:
        return Projection(
            self.balances.name,
            self.handle,
            setup=self.balances.setup,
            teardown=self.balances.teardown,
            in_memory=self.kind == "in_memory",
            external=self.kind == "external",
            **options,
        )

    def stored_count(self) -> int:
        """Events the SQL read model holds (each deposit adds 1)."""
        return sum(self.balances.read(self.store).values())


# -- item: stop is honoured within one batch ---------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_stop_during_a_catch_up_ends_the_run_within_one_batch(store: EventStore, kind: str) -> None:
    positions = backlog(store, 1_500)
    counted = Counted(store, kind, stop_at=130)
    runner = ProjectionRunner(store, counted.projection(batch_size=500), max_batch_seconds=60)
    runner.run(counted.stop)  # returns: the backlog is not finished
    if kind == "in_memory":
        assert counted.handled == 500  # the page in hand
    else:
        assert counted.handled == 130  # SQL: the transaction in hand; external: the event
    assert runner.position == positions[counted.handled - 1]
    if counted.sql:
        assert counted.stored_count() == 130  # what was handled was committed, nothing more
    # The next run goes on from there and handles each event once.
    counted.stop_at = None
    first = counted.handled
    assert runner.run_once() == 1_500 - first
    assert counted.handled == 1_500
    assert runner.position == positions[-1]
    if counted.sql:
        assert counted.stored_count() == 1_500


def test_a_sql_batch_commits_after_max_batch_seconds(store: EventStore) -> None:
    backlog(store, 300)
    commits: list[int] = []
    counted = Counted(store, "sql")
    runner = ProjectionRunner(store, counted.projection(batch_size=300), max_batch_seconds=1e-9)
    original = runner._advance

    def advance(conn: Any, position: int) -> None:
        commits.append(position)
        original(conn, position)

    runner._advance = advance  # type: ignore[method-assign]
    assert runner.run_once() == 300
    assert len(commits) == 300  # the smallest bound: one event per transaction
    if counted.sql:  # (the memory store commits each event anyway)
        assert counted.stored_count() == 300


# -- item: a reset respects a live runner; a lost lease means standby -----------------------


def test_a_reset_refuses_while_another_runner_holds_the_lease(store: EventStore) -> None:
    backlog(store, 100)
    model = Balances()
    live = ProjectionRunner(store, model.projection(), owner="app-1", lease_seconds=30)
    assert live.run_once() == 100
    operator = ProjectionRunner(store, model.projection(), owner="cli")
    with pytest.raises(LeaseHeld) as info:
        operator.reset()
    assert info.value.owner == "app-1" and "app-1" in str(info.value)
    assert "switch" in str(info.value)  # the no-downtime path is offered
    # Nothing was pulled from under the live runner: it goes on.
    assert live.position == operator.position
    store.append("acc-0", [Deposited(amount=5)])
    assert live.run_once() == 1
    assert sum(model.read(store).values()) == 105


def test_a_reset_that_waits_takes_over_when_the_runner_stops(store: EventStore) -> None:
    backlog(store, 100)
    model = Balances()
    stop = threading.Event()
    live = ProjectionRunner(store, model.projection(), owner="app-1", poll_interval=0.05)
    thread = threading.Thread(target=live.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: live.status().lag_events == 0)
        resetting = threading.Thread(
            target=ProjectionRunner(store, model.projection(), owner="cli").reset,
            kwargs={"wait": 30},
        )
        resetting.start()
        stop.set()  # the application shuts its runner down
        thread.join(10)
        resetting.join(30)
        assert not resetting.is_alive()
    finally:
        stop.set()
        thread.join(10)
    fresh = ProjectionRunner(store, model.projection(), owner="app-2")
    assert fresh.position == 0 and fresh.dead_letters() == []
    assert fresh.run_once() == 100  # replayed from the start into a fresh read model
    assert sum(model.read(store).values()) == 100


def test_a_runner_that_loses_its_lease_goes_back_to_standby(store: EventStore) -> None:
    backlog(store, 100)
    seen: set[Any] = set()  # an idempotent effect: delivery is at least once
    entered, release = threading.Event(), threading.Event()

    def effect(ctx: ProjectionContext, event: RecordedEvent) -> None:
        if event.data.amount == 7 and threading.current_thread().name == "runner-a":
            entered.set()
            release.wait(30)  # a call hung past the lease
        seen.add(event.id)

    projection = Projection(f"mail-{uuid.uuid4().hex[:6]}", effect, external=True)
    a = ProjectionRunner(store, projection, owner="a", lease_seconds=0.3, poll_interval=0.05)
    b = ProjectionRunner(store, projection, owner="b", lease_seconds=30, poll_interval=0.05)
    stop_a, stop_b = threading.Event(), threading.Event()
    thread_a = threading.Thread(target=a.run, args=(stop_a,), name="runner-a")
    thread_b = threading.Thread(target=b.run, args=(stop_b,), name="runner-b")
    thread_a.start()
    try:
        wait_until(lambda: a.status().lag_events == 0)
        store.append("acc-0", [Deposited(amount=7)])
        assert entered.wait(30)
        thread_b.start()  # a's lease runs out while it hangs: b takes over
        wait_until(lambda: b.status().lag_events == 0 and not b.status().standby)
        release.set()
        wait_until(lambda: a.status().standby)
        assert thread_a.is_alive()  # on standby, not ended
        assert "LeaseLost" in (a.status().last_error or "")
        stop_b.set()
        thread_b.join(10)  # b stops and lets the lease go: a takes over again
        store.append("acc-2", [Deposited(amount=1)])
        wait_until(lambda: not a.status().standby and a.status().lag_events == 0)
    finally:
        release.set()
        stop_a.set()
        stop_b.set()
        thread_a.join(10)
        if thread_b.is_alive():
            thread_b.join(10)
    assert seen == {e.id for e in store.read_all()}


# -- item: supervision ------------------------------------------------------------------


def test_run_forever_restarts_after_a_failure_and_stops_cleanly(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    backlog(store, 30)
    failures = [2]  # the first two tries of the 11th event fail
    handled: list[int] = []

    def flaky(ctx: ProjectionContext, event: RecordedEvent) -> None:
        if failures[0] and len(handled) == 10:
            failures[0] -= 1
            raise RuntimeError("a bug, fixed by the next deploy")
        handled.append(event.position)

    projection = Projection(f"flaky-{uuid.uuid4().hex[:6]}", flaky, external=True)
    runner = ProjectionRunner(store, projection, poll_interval=0.02)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run_forever, args=(stop,), kwargs={"max_backoff": 0.1})
    with caplog.at_level(logging.ERROR, "eventfold.projections"):
        thread.start()
    try:
        wait_until(lambda: len(handled) == 30)
        status = runner.status()
        assert status.restarts == 2 and status.running
        assert status.last_error is None  # recovered
        failed = [r for r in caplog.records if "(restart" in r.getMessage()]
        assert len(failed) == 2 and "a bug" in failed[0].getMessage()
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert not runner.status().running
    assert handled == sorted(set(handled))  # each event once, in order


def test_a_busy_handler_shows_in_the_status_and_the_log(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    backlog(store, 10)
    entered, release = threading.Event(), threading.Event()
    busy: list[float] = []

    def stuck(ctx: ProjectionContext, event: RecordedEvent) -> None:
        if not entered.is_set():
            entered.set()
            release.wait(30)

    projection = Projection(f"stuck-{uuid.uuid4().hex[:6]}", stuck)
    runner = ProjectionRunner(store, projection, lease_seconds=0.2)
    thread = threading.Thread(target=runner.run_once)
    with caplog.at_level(logging.WARNING, "eventfold.projections"):
        thread.start()
        assert entered.wait(10)

        def seen_busy() -> bool:
            busy.append(runner.status().busy_seconds)
            return busy[-1] > 0.15

        wait_until(seen_busy)
        release.set()
        thread.join(10)
    assert runner.status().busy_seconds == 0.0
    assert any("more than half the lease" in r.getMessage() for r in caplog.records)
