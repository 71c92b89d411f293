"""Projections: checkpoints in one transaction with the read model, policies, leases."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventfold import (
    AsyncMemoryEventStore,
    ConfigurationError,
    InvalidRequest,
    MemoryEventStore,
    RecordedEvent,
    SqliteEventStore,
)
from eventfold.projections import (
    SKIP,
    ErrorPolicy,
    LeaseLost,
    Progress,
    Projection,
    ProjectionContext,
    ProjectionRunner,
    ProjectionStopped,
    active_projection,
    attach_inline,
    switch_projection,
)
from eventfold.store import EventStore, StreamAppend
from eventfold.testing import run_threads
from eventfold.testing._events import Deposited, Opened, Withdrawn
from tests.support.calls import count_calls

# -- a read model that works on every store -----------------------------------------------


class Balances:
    """Account balances: a SQL table on SQLite/PostgreSQL, a dict in memory."""

    def __init__(self, name: str | None = None) -> None:
        # Unique per test: on PostgreSQL every test's read model shares one database.
        self.name = name or f"balances_{uuid.uuid4().hex[:10]}"
        self.memory: dict[str, int] = {}
        self.fail_on: set[int] = set()  # amounts that make the handler raise
        self.seen = threading.Event()
        self.wait_for: int | None = None

    def projection(self, **options: Any) -> Projection:
        return Projection(
            self.name,
            self.handle,
            types=["eventfold.testing.Deposited", "eventfold.testing.Withdrawn"],
            setup=self.setup,
            teardown=self.teardown,
            **options,
        )

    def _sql(self, ctx: ProjectionContext, sql: str, params: tuple[Any, ...] = ()) -> Any:
        if isinstance(ctx.connection, sqlite3.Connection):
            return ctx.connection.execute(sql, params)
        return ctx.connection.execute(sql.replace("?", "%s"), params)

    def setup(self, ctx: ProjectionContext) -> None:
        if ctx.connection is not None:
            self._sql(
                ctx,
                f"CREATE TABLE IF NOT EXISTS {self.name} "
                "(account TEXT PRIMARY KEY, balance BIGINT NOT NULL, events BIGINT NOT NULL)",
            )

    def teardown(self, ctx: ProjectionContext) -> None:
        self.memory.clear()
        if ctx.connection is not None:
            self._sql(ctx, f"DROP TABLE IF EXISTS {self.name}")

    def handle(self, ctx: ProjectionContext, event: RecordedEvent) -> None:
        amount = event.data.amount
        if amount in self.fail_on:
            raise ValueError(f"cannot handle amount {amount}")
        delta = amount if isinstance(event.data, Deposited) else -amount
        if ctx.connection is None:
            self.memory[event.stream] = self.memory.get(event.stream, 0) + delta
        else:
            self._sql(
                ctx,
                f"INSERT INTO {self.name} (account, balance, events) VALUES (?, ?, 1) "
                f"ON CONFLICT (account) DO UPDATE SET balance = {self.name}.balance + "
                f"excluded.balance, events = {self.name}.events + 1",
                (event.stream, delta),
            )
        if self.wait_for is not None and event.position >= self.wait_for:
            self.seen.set()

    def read(self, store: EventStore, in_memory: bool = False) -> dict[str, int]:
        if in_memory or isinstance(store, MemoryEventStore):
            return dict(self.memory)
        if isinstance(store, SqliteEventStore):
            with store._db.write_transaction() as conn:
                rows = conn.execute(f"SELECT account, balance FROM {self.name}").fetchall()
            return dict(rows)
        with store.pool.connection() as conn:  # type: ignore[attr-defined]
            return dict(conn.execute(f"SELECT account, balance FROM {self.name}").fetchall())


def expected_balances(store: EventStore) -> dict[str, int]:
    result: dict[str, int] = {}
    for event in store.read_all():
        if isinstance(event.data, Deposited):
            result[event.stream] = result.get(event.stream, 0) + event.data.amount
        elif isinstance(event.data, Withdrawn):
            result[event.stream] = result.get(event.stream, 0) - event.data.amount
    return result


@pytest.fixture
def store(any_store: EventStore) -> Iterator[EventStore]:
    yield any_store


def fill(store: EventStore, accounts: int = 5, per_account: int = 8) -> None:
    for n in range(per_account):
        for a in range(accounts):
            events: list[object] = [Deposited(amount=10 + n)]
            if n % 3 == 2:
                events.append(Withdrawn(amount=n))
            store.append(f"acc-{a}", events)


# -- catching up ------------------------------------------------------------------------


def test_catch_up_builds_the_read_model_and_checkpoint(store: EventStore) -> None:
    fill(store)
    model = Balances()
    runner = ProjectionRunner(store, model.projection(batch_size=7))
    handled = runner.run_once()
    assert handled == sum(1 for _ in store.read_all())
    assert model.read(store) == expected_balances(store)
    assert runner.position == store.last_position()
    status = runner.status()
    assert (status.position, status.lag_events, status.last_error) == (runner.position, 0, None)
    assert status.events_per_second > 0
    assert runner.run_once() == 0  # nothing new: nothing handled twice
    store.append("acc-9", [Deposited(amount=1)])
    assert runner.status().lag_events == 1
    assert runner.run_once() == 1
    assert model.read(store)["acc-9"] == 1


def test_checkpoint_survives_a_new_runner(store: EventStore) -> None:
    fill(store, accounts=2, per_account=3)
    model = Balances()
    first = ProjectionRunner(store, model.projection())
    first.run_once()
    first_position = first.position
    store.append("acc-0", [Deposited(amount=1000)])
    second = ProjectionRunner(store, model.projection(), owner=first.owner)
    assert second.position == first_position
    assert second.run_once() == 1
    assert model.read(store) == expected_balances(store)


def test_in_memory_read_model_starts_from_zero(store: EventStore) -> None:
    fill(store, accounts=3, per_account=4)
    model = Balances()
    runner = ProjectionRunner(store, model.projection(in_memory=True))
    runner.run_once()
    assert model.read(store, in_memory=True) == expected_balances(store)
    again = Balances()
    assert ProjectionRunner(store, again.projection(in_memory=True)).run_once() > 0
    assert again.memory == model.memory


def test_rebuild_replays_from_zero(store: EventStore) -> None:
    fill(store, accounts=2, per_account=5)
    model = Balances()
    runner = ProjectionRunner(store, model.projection())
    runner.run_once()
    before = model.read(store)
    total = sum(1 for _ in store.read_all())
    assert runner.rebuild() == total
    assert model.read(store) == before == expected_balances(store)


# -- error policies -----------------------------------------------------------------------


def test_stop_policy_stops_at_the_poison_event_and_shows_it(store: EventStore) -> None:
    fill(store, accounts=2, per_account=4)
    model = Balances()
    model.fail_on = {12}
    runner = ProjectionRunner(store, model.projection(batch_size=100))
    with pytest.raises(ProjectionStopped) as stopped:
        runner.run_once()
    poison = stopped.value.event
    assert poison.data.amount == 12
    assert runner.position < poison.position
    status = runner.status()
    assert status.last_error is not None and "amount 12" in status.last_error
    assert status.lag_events > 0
    # Everything before the poison event is applied, nothing after it.
    before = [e for e in store.read_all() if e.position < poison.position]
    assert sum(model.read(store).values()) == sum(
        e.data.amount if isinstance(e.data, Deposited) else -e.data.amount for e in before
    )
    model.fail_on = set()  # fixed: running again picks up at the poison event
    runner.run_once()
    assert model.read(store) == expected_balances(store)


def test_skip_policy_records_dead_letters_and_goes_on(store: EventStore) -> None:
    fill(store, accounts=3, per_account=4)
    model = Balances()
    model.fail_on = {11}
    runner = ProjectionRunner(store, model.projection(on_error=SKIP))
    runner.run_once()
    letters = runner.dead_letters()
    poisoned = [e for e in store.read_all() if getattr(e.data, "amount", None) == 11]
    assert [d.position for d in letters] == [e.position for e in poisoned]
    assert all("amount 11" in d.error for d in letters)
    expected = expected_balances(store)
    for event in poisoned:
        expected[event.stream] -= 11
    assert model.read(store) == expected
    assert runner.position == store.last_position()
    assert runner.status().dead_letters == len(poisoned)


def test_retry_policy_recovers_from_transient_errors(store: EventStore) -> None:
    fill(store, accounts=1, per_account=3)
    model = Balances()
    failures = {"left": 2}
    original = model.handle

    def flaky(ctx: ProjectionContext, event: RecordedEvent) -> None:
        if event.data.amount == 11 and failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("read model briefly unavailable")
        original(ctx, event)

    projection = Projection(
        "flaky",
        flaky,
        setup=model.setup,
        on_error=ErrorPolicy(retries=3, backoff=0.001),
    )
    runner = ProjectionRunner(store, projection)
    runner.run_once()
    assert failures["left"] == 0
    assert runner.dead_letters() == []
    assert model.read(store) == expected_balances(store)


# -- one runner at a time -----------------------------------------------------------------


def test_a_second_runner_waits_for_the_lease(store: EventStore) -> None:
    fill(store, accounts=2, per_account=2)
    model = Balances()
    first = ProjectionRunner(store, model.projection(), lease_seconds=30)
    second = ProjectionRunner(store, model.projection(), lease_seconds=30)
    assert first.run_once() > 0
    store.append("acc-0", [Deposited(amount=5)])
    assert second.run_once() == 0  # the first holds the lease
    assert first.run_once() == 1
    assert model.read(store) == expected_balances(store)


def test_an_expired_lease_fails_over_and_fences_the_old_owner(store: EventStore) -> None:
    fill(store, accounts=2, per_account=2)
    model = Balances()
    stale = ProjectionRunner(store, model.projection(), lease_seconds=0.001)
    stale.run_once()
    threading.Event().wait(0.01)  # let the stale owner's lease run out
    standby = ProjectionRunner(store, model.projection(), lease_seconds=30)
    store.append("acc-0", [Deposited(amount=5)])
    assert standby.run_once() == 1
    store.append("acc-1", [Deposited(amount=6)])
    # The stale owner cannot take the lease back, nor write behind the new owner.
    assert stale.run_once() == 0
    with pytest.raises(LeaseLost):
        stale._commit(list(store.read_all(after=standby.position)))
    assert model.read(store) == {
        **expected_balances(store),
        "acc-1": expected_balances(store)["acc-1"] - 6,
    }


# -- live ---------------------------------------------------------------------------------


def test_run_follows_new_events_until_stopped(store: EventStore) -> None:
    model = Balances()
    runner = ProjectionRunner(store, model.projection(), poll_interval=0.05)
    stop = threading.Event()
    worker = threading.Thread(target=runner.run, args=(stop,))
    worker.start()
    try:
        for i in range(5):
            result = store.append(f"acc-{i}", [Deposited(amount=i + 1)])
        model.wait_for = result.position
        assert model.seen.wait(10), "the runner did not deliver the new events"
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()
    assert model.read(store) == expected_balances(store)
    assert runner.status().running is False


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_runner_waits_quietly_when_the_log_ends_with_events_it_skips(
    store: EventStore, in_memory: bool
) -> None:
    store.append("acc-1", [Deposited(amount=1), Withdrawn(amount=1)])
    store.append("other", [Deposited(amount=5)])
    handled: list[int] = []
    arrived = threading.Event()

    def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
        handled.append(event.position)
        arrived.set()

    projection = Projection(
        f"deposits_{uuid.uuid4().hex[:8]}",
        handle,
        types=["eventfold.testing.Deposited"],
        stream_prefix="acc-",
        in_memory=in_memory,
    )
    runner = ProjectionRunner(store, projection, poll_interval=60)
    assert runner.run_once() == 1
    # The checkpoint moved over the skipped tail: nothing is left to do.
    assert runner.position == store.last_position()
    assert runner.status().lag_events == 0
    reads = count_calls(store, "_read_all_page")
    stop = threading.Event()
    worker = threading.Thread(target=runner.run, args=(stop,))
    worker.start()
    try:
        # An idle moment: a runner woken at once by the skipped events would
        # read the log thousands of times here (a poll interval of 60 s: none).
        stop.wait(0.3)
        assert len(reads) <= 2  # the run's first pass, and its check for more
        arrived.clear()
        store.append("other", [Deposited(amount=6)])
        latest = store.append("acc-1", [Deposited(amount=2)]).position
        assert arrived.wait(10), "new events did not wake the runner"
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()
    wanted = store.read_all(types=projection.types, stream_prefix="acc-")
    assert handled == [e.position for e in wanted]
    assert handled[-1] == latest


def test_a_standby_runner_tries_for_the_lease_once_per_poll_interval(store: EventStore) -> None:
    fill(store, accounts=2, per_account=2)
    model = Balances()
    active = ProjectionRunner(store, model.projection(), owner="active")
    assert active.run_once() > 0  # holds the lease for lease_seconds
    store.append("acc-0", [Deposited(amount=1)])  # the active runner has not seen it yet
    standby = ProjectionRunner(store, model.projection(), owner="standby", poll_interval=60)
    attempts = count_calls(standby._checkpoints, "acquire")
    stop = threading.Event()
    worker = threading.Thread(target=standby.run, args=(stop,))
    worker.start()
    try:
        stop.wait(0.3)  # an idle moment: the standby must not spin on the lease
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()
    assert attempts == [1]
    assert standby.status().position == active.position


def test_projection_validation(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest):
        Projection("", lambda ctx, event: None)
    with pytest.raises(InvalidRequest):
        Projection("p", lambda ctx, event: None, batch_size=0)
    with pytest.raises(InvalidRequest):
        ErrorPolicy(retries=-1)
    with pytest.raises(InvalidRequest):
        Projection("p", lambda ctx, event: None, types="docs.Deposited")


def test_rebuild_beside_the_live_version_then_switch(store: EventStore) -> None:
    fill(store, accounts=3, per_account=6)
    live = Balances()
    live_runner = ProjectionRunner(store, live.projection())
    live_runner.run_once()
    switch_projection(store, "balances", live.projection())
    assert active_projection(store, "balances") == live.name

    # Version 2 counts events too; it is built beside version 1 while writers go on.
    new = Balances()
    reports: list[Progress] = []
    new_runner = ProjectionRunner(store, new.projection(batch_size=5))
    store.append("acc-0", [Deposited(amount=1)])
    new_runner.catch_up(progress=reports.append)
    assert active_projection(store, "balances") == live.name  # the old one still serves
    assert [r.done for r in reports] == sorted(r.done for r in reports)
    assert reports[-1].left == 0 and reports[-1].eta_seconds == 0
    assert reports[0].left > 0 and reports[0].eta_seconds > 0
    switch_projection(store, "balances", new.projection())
    assert active_projection(store, "balances") == new.name
    assert new.read(store) == expected_balances(store)
    assert active_projection(store, "no-such-alias") is None


def test_context_execute_runs_portable_sql(store: EventStore) -> None:
    if isinstance(store, MemoryEventStore):
        with pytest.raises(InvalidRequest):
            ProjectionContext(Balances().projection(), None).execute("SELECT 1")
        return
    table = f"portable_{uuid.uuid4().hex[:8]}"

    def setup(ctx: ProjectionContext) -> None:
        ctx.execute(f"CREATE TABLE {table} (stream TEXT PRIMARY KEY, last BIGINT)")

    def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
        ctx.execute(
            f"INSERT INTO {table} (stream, last) VALUES (?, ?) "
            "ON CONFLICT (stream) DO UPDATE SET last = excluded.last",
            (event.stream, event.version),
        )

    fill(store, accounts=2, per_account=3)
    ProjectionRunner(store, Projection(table, handle, setup=setup)).run_once()
    query = f"SELECT stream, last FROM {table}"
    if isinstance(store, SqliteEventStore):
        rows = dict(store._db.connection().execute(query).fetchall())
    else:
        with store.pool.connection() as conn:  # type: ignore[attr-defined]
            rows = dict(conn.execute(query).fetchall())
    assert rows == {e.stream: e.version for e in store.read_all()} == {"acc-0": 4, "acc-1": 4}


# -- inline projections -----------------------------------------------------------------


def test_inline_projection_reads_its_writes_and_can_veto(store: EventStore) -> None:
    model = Balances()
    attach_inline(store, model.projection())
    store.append("acc-1", [Deposited(amount=10), Withdrawn(amount=3)])
    assert model.read(store) == {"acc-1": 7}  # already there when append returns
    model.fail_on = {99}
    before = store.last_position()
    with pytest.raises(ValueError, match="amount 99"):
        store.append("acc-1", [Deposited(amount=1), Deposited(amount=99)])
    assert store.last_position() == before  # the failing projection undid the append
    assert [e.version for e in store.read("acc-1")] == [1, 2]
    if isinstance(store, MemoryEventStore):
        return  # a dict cannot roll back the batch's first event (documented)
    assert model.read(store) == {"acc-1": 7}  # the read model's writes rolled back too
    store.append("acc-2", [Deposited(amount=5)])
    assert model.read(store) == expected_balances(store) == {"acc-1": 7, "acc-2": 5}


def test_inline_projection_sees_each_stream_of_append_many(store: EventStore) -> None:
    model = Balances()
    attach_inline(store, model.projection())
    batches: list[list[tuple[str, int]]] = []
    store.add_append_hook(
        lambda tx, events: batches.append([(e.stream, e.version) for e in events])
    )
    store.append_many(
        [
            StreamAppend("acc-1", [Deposited(amount=10), Withdrawn(amount=3)]),
            StreamAppend("acc-2", [Deposited(amount=5)]),
            StreamAppend("acc-3", []),
        ]
    )
    # Once per stream's batch (an empty one has no events: no call), in one transaction.
    assert batches == [[("acc-1", 1), ("acc-1", 2)], [("acc-2", 1)]]
    assert model.read(store) == {"acc-1": 7, "acc-2": 5}
    model.fail_on = {99}
    before = store.last_position()
    with pytest.raises(ValueError, match="amount 99"):
        store.append_many(
            [
                StreamAppend("acc-1", [Deposited(amount=1)]),
                StreamAppend("acc-2", [Deposited(amount=99)]),
            ]
        )
    assert store.last_position() == before  # the failing projection undid both streams
    assert [e.version for e in store.read("acc-1")] == [1, 2]
    if isinstance(store, MemoryEventStore):
        return  # a dict cannot roll back the first stream's batch (documented)
    assert model.read(store) == expected_balances(store) == {"acc-1": 7, "acc-2": 5}


def test_inline_needs_a_sync_store_and_a_database_projection(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        attach_inline(AsyncMemoryEventStore(), Balances().projection())  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        attach_inline(MemoryEventStore(), Balances().projection(external=True))


def test_in_memory_projection_policies_apply_to_exactly_the_failing_event(
    store: EventStore,
) -> None:
    fill(store, accounts=3, per_account=4)
    model = Balances()
    model.fail_on = {12}
    runner = ProjectionRunner(store, model.projection(in_memory=True, on_error=SKIP))
    runner.run_once()
    poisoned = [e for e in store.read_all() if getattr(e.data, "amount", None) == 12]
    assert [d.position for d in runner.dead_letters()] == [e.position for e in poisoned]
    expected = expected_balances(store)
    for event in poisoned:
        expected[event.stream] -= 12
    assert model.memory == expected  # every other event applied exactly once
    assert runner.position == store.last_position()

    stopping = Balances()
    stopping.fail_on = {12}
    stopper = ProjectionRunner(store, stopping.projection(in_memory=True))
    with pytest.raises(ProjectionStopped) as stopped:
        stopper.run_once()
    assert stopper.position == max(
        e.position for e in store.read_all() if e.position < stopped.value.event.position
    )


# -- long catch-ups (PostgreSQL streams a backlog over several statements) ------------------


def big_log(store: EventStore, events: int = 1_800) -> None:
    """``events`` events in 9 streams of 3 kinds, appended 50 at a time."""
    for start in range(0, events, 50):
        for offset in range(0, 50, 25):
            stream = f"{'acc' if (start // 50) % 3 else 'other'}-{(start // 50) % 3}"
            store.append(
                stream,
                [
                    Deposited(amount=n)
                    if n % 3
                    else Opened(owner=str(n))
                    if n % 2
                    else Withdrawn(amount=n)
                    for n in range(start + offset, start + offset + 25)
                ],
            )


@pytest.mark.parametrize(
    ("types", "prefix"),
    [(None, None), (["eventfold.testing.Deposited", "eventfold.testing.Withdrawn"], "acc-")],
)
def test_an_in_memory_catch_up_handles_each_event_once_in_log_order(
    store: EventStore, types: list[str] | None, prefix: str | None
) -> None:
    # Pages of 4: PostgreSQL ends a streamed statement every 800 rows, so this
    # log is read by several statements, and the last page is a partial one.
    big_log(store)
    seen: list[int] = []
    projection = Projection(
        f"order-{uuid.uuid4().hex[:8]}",
        lambda ctx, event: seen.append(event.position),
        types=types,
        stream_prefix=prefix,
        batch_size=4,
        in_memory=True,
    )
    pages: list[Progress] = []
    runner = ProjectionRunner(store, projection)
    handled = runner.catch_up(pages.append)
    wanted = [e.position for e in store.read_all(types=types, stream_prefix=prefix)]
    assert seen == wanted and handled == len(wanted)
    assert 0 < len(wanted) < 1_800 if prefix else len(wanted) == 1_800
    done = [p.done for p in pages]
    assert done[-1] == len(wanted) and pages[-1].left == 0
    assert all(1 <= b - a <= 4 for a, b in zip([0, *done], done, strict=False))
    assert runner.position == wanted[-1]


def test_an_in_memory_catch_up_stopped_midway_resumes_where_it_stopped(
    store: EventStore,
) -> None:
    big_log(store)
    log = [e.position for e in store.read_all()]
    poison = log[1_000]
    seen: list[int] = []

    def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
        if event.position == poison:
            raise ValueError("poison")
        seen.append(event.position)

    first = ProjectionRunner(store, Projection("stops", handle, batch_size=7, in_memory=True))
    with pytest.raises(ProjectionStopped):
        first.run_once()
    assert seen == log[:1_000] and first.position == log[999]
    # The stopped read gave its connection back: appends and reads go on.
    store.append("after-stop", [Deposited(amount=1)])
    poison = -1
    assert first.run_once() == len(log) - 1_000 + 1
    assert seen == [e.position for e in store.read_all()]


def test_concurrent_writers_and_a_streaming_catch_up_miss_and_double_nothing(
    store: EventStore,
) -> None:
    big_log(store, 600)
    seen: list[int] = []
    runner = ProjectionRunner(
        store,
        Projection(
            "follower", lambda ctx, event: seen.append(event.position), batch_size=5, in_memory=True
        ),
    )
    finished: list[int] = []

    def write(writer: int) -> None:
        try:
            for n in range(60):
                store.append(f"w{writer}", [Deposited(amount=n), Deposited(amount=-n)])
        finally:
            finished.append(writer)

    def follow() -> None:
        while len(finished) < 4:
            runner.run_once()
        runner.run_once()

    run_threads([follow] + [lambda w=w: write(w) for w in range(4)])
    assert seen == sorted(set(seen))  # in order, none twice
    assert seen == [e.position for e in store.read_all()]  # none missed
    assert len(seen) == 600 + 4 * 60 * 2
