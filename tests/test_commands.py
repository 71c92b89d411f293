"""CommandHandler: decide, append, retry on conflict, rejections, idempotency."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from eventfold import (
    Aggregate,
    AsyncCommandHandler,
    AsyncMemoryEventStore,
    AsyncSqliteEventStore,
    CommandHandler,
    Decider,
    Event,
    IdempotencyKeyReused,
    InvalidRequest,
    Loaded,
    MemoryEventStore,
    NewEvent,
    SqliteEventStore,
    WrongExpectedVersion,
)
from eventfold.commands import (
    COMMAND_DIGEST,
    IDEMPOTENCY_KEY,
    command_digest,
    idempotent_event_id,
)
from eventfold.store import EventStore
from eventfold.testing import DeciderSpec, run_threads


class Credited(Event, frozen=True):
    __event_type__ = "tests.Credited"
    amount: int


class Debited(Event, frozen=True):
    __event_type__ = "tests.Debited"
    amount: int


class Overdrawn(Exception):
    """The user's own business exception."""


@dataclass(frozen=True)
class Credit:
    amount: int


@dataclass(frozen=True)
class Debit:
    amount: int


def decide(command: Credit | Debit, balance: int) -> Sequence[Event]:
    match command:
        case Credit(amount=amount):
            return [Credited(amount=amount)]
        case Debit(amount=amount):
            if amount > balance:
                raise Overdrawn(f"{amount} > {balance}")
            return [Debited(amount=amount)] if amount else []


def evolve(balance: int, event: Event) -> int:
    match event:
        case Credited(amount=amount):
            return balance + amount
        case Debited(amount=amount):
            return balance - amount
    return balance


ledger: Decider[int, Credit | Debit, Event] = Decider(decide, evolve, int)


class Wallet(Aggregate):
    def __init__(self) -> None:
        self.balance = 0

    def credit(self, amount: int) -> None:
        self.record(Credited(amount=amount))

    def debit(self, amount: int) -> None:
        if amount > self.balance:
            raise Overdrawn(f"{amount} > {self.balance}")
        self.record(Debited(amount=amount))

    def apply(self, event: object) -> None:
        match event:
            case Credited(amount=amount):
                self.balance += amount
            case Debited(amount=amount):
                self.balance -= amount


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    if request.param == "memory":
        return MemoryEventStore()
    return SqliteEventStore(tmp_path / "cmd.db", durability="off")


def test_decider_command_appends_and_returns_new_state(store: MemoryEventStore) -> None:
    handler = CommandHandler(store, ledger)
    first = handler.handle("w", Credit(100))
    second = handler.handle("w", Debit(30))
    assert (first.state, first.version, first.events) == (100, 1, (Credited(amount=100),))
    assert (second.state, second.version) == (70, 2)
    assert second.position == store.last_position()
    assert handler.load("w").state == 70
    assert handler.load("w").version == 2


def test_rejected_command_writes_nothing_and_propagates(store: MemoryEventStore) -> None:
    handler = CommandHandler(store, ledger)
    handler.handle("w", Credit(10))
    before = store.last_position()
    with pytest.raises(Overdrawn, match="50 > 10"):
        handler.handle("w", Debit(50))
    assert store.last_position() == before
    assert [e.version for e in store.read("w")] == [1]


def test_empty_decision_writes_nothing(store: MemoryEventStore) -> None:
    handler = CommandHandler(store, ledger)
    handler.handle("w", Credit(1))
    result = handler.handle("w", Debit(0))
    assert (result.events, result.version, result.state) == ((), 1, 1)
    assert store.last_position() == 1


def test_class_style_aggregate(store: MemoryEventStore) -> None:
    handler = CommandHandler(store, Wallet)
    handler.handle("w", lambda w: w.credit(40))
    result = handler.handle("w", lambda w: w.debit(15))
    assert result.state.balance == 25
    assert result.state.version == 2
    assert result.state.pending_events == ()
    with pytest.raises(Overdrawn):
        handler.handle("w", lambda w: w.debit(1000))
    assert [type(e.data) for e in store.read("w")] == [Credited, Debited]
    loaded = handler.load("w")
    assert (loaded.state.balance, loaded.version) == (25, 2)


def test_conflicts_are_retried_against_reloaded_state(store: MemoryEventStore) -> None:
    handler = CommandHandler(store, ledger, max_retries=50, retry_delay=0.0005)
    handler.handle("w", Credit(0))
    per_thread, threads = 15, 4

    def worker() -> None:
        for _ in range(per_thread):
            handler.handle("w", Credit(1))

    run_threads([worker] * threads)
    assert handler.load("w").state == per_thread * threads
    versions = [e.version for e in store.read("w")]
    assert versions == list(range(1, per_thread * threads + 2))


def test_retries_are_bounded() -> None:
    store = MemoryEventStore()
    calls = 0

    def decide_then_interfere(command: Credit | Debit, state: int) -> Sequence[Event]:
        # Another writer commits between our load and our append, every time.
        nonlocal calls
        calls += 1
        store.append("w", [Credited(amount=1)])
        return decide(command, state)

    interfered = Decider(decide_then_interfere, evolve, int)
    handler = CommandHandler(store, interfered, max_retries=2, retry_delay=0)
    with pytest.raises(WrongExpectedVersion):
        handler.handle("w", Credit(5))
    assert calls == 3
    assert [e.data for e in store.read("w")] == [Credited(amount=1)] * 3


def test_idempotency_key_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "idem.db"
    with SqliteEventStore(path) as store:
        handler = CommandHandler(store, ledger)
        handler.handle("w", Credit(100))
        first = handler.handle("w", Debit(60), idempotency_key="payment-1")
        assert not first.replayed
    with SqliteEventStore(path) as store:
        handler = CommandHandler(store, ledger)
        again = handler.handle("w", Debit(60), idempotency_key="payment-1")
        assert again.replayed
        assert (again.events, again.version, again.state) == ((Debited(amount=60),), 2, 40)
        assert [e.version for e in store.read("w")] == [1, 2]
        (stored,) = store.read("w", from_version=2)
        assert stored.metadata[IDEMPOTENCY_KEY] == "payment-1"
        other = handler.handle("w", Debit(10), idempotency_key="payment-2")
        assert (other.replayed, other.state) == (False, 30)


def test_racing_deliveries_of_one_command_write_once(tmp_path: Path) -> None:
    with SqliteEventStore(tmp_path / "race.db") as store:
        CommandHandler(store, ledger).handle("w", Credit(100))
        barrier = threading.Barrier(4)

        def deliver() -> None:
            handler = CommandHandler(store, ledger)
            barrier.wait()
            handler.handle("w", Debit(10), idempotency_key="once")

        run_threads([deliver] * 4)
        assert [e.data for e in store.read("w")] == [Credited(amount=100), Debited(amount=10)]


def test_metadata_is_stored_with_events(store: MemoryEventStore) -> None:
    handler = CommandHandler(store, ledger, metadata={"app": "tests"})
    handler.handle("w", Credit(1), metadata={"correlation_id": "c-1"})
    (event,) = store.read("w")
    assert dict(event.metadata) == {"app": "tests", "correlation_id": "c-1"}


def test_bad_handler_arguments() -> None:
    store = MemoryEventStore()
    with pytest.raises(InvalidRequest):
        CommandHandler(store, object())  # type: ignore[call-overload]
    with pytest.raises(InvalidRequest):
        CommandHandler(store, ledger, max_retries=-1)
    with pytest.raises(InvalidRequest):
        CommandHandler(store, ledger).handle("w", Credit(1), idempotency_key="")


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_async_handler(tmp_path: Path, backend: str) -> None:
    store = (
        AsyncMemoryEventStore()
        if backend == "memory"
        else AsyncSqliteEventStore(tmp_path / "a.db", durability="off")
    )
    async with store:
        handler = AsyncCommandHandler(store, ledger, max_retries=50, retry_delay=0.0005)
        await handler.handle("w", Credit(0))
        await asyncio.gather(*(handler.handle("w", Credit(1)) for _ in range(20)))
        with pytest.raises(Overdrawn):
            await handler.handle("w", Debit(21))
        loaded = await handler.load("w")
        assert (loaded.state, loaded.version) == (20, 21)
        replay = await handler.handle("w", Debit(5), idempotency_key="k")
        again = await handler.handle("w", Debit(5), idempotency_key="k")
        assert again.replayed and again.events == replay.events
        assert (await handler.load("w")).state == 15


def test_decider_spec_helpers() -> None:
    spec = DeciderSpec(ledger)
    spec.given(Credited(amount=10)).when(Debit(3)).then(Debited(amount=3))
    spec.given(Credited(amount=10)).when(Debit(30)).then_raises(Overdrawn, match="30 > 10")
    spec.given(Credited(amount=10)).when(Debit(0)).then_nothing()
    assert spec.given().when(Credit(4)).then_state(lambda s: s == 4) == 4
    with pytest.raises(AssertionError):
        spec.given().when(Credit(4)).then(Credited(amount=5))
    with pytest.raises(AssertionError):
        spec.given().when(Credit(4)).then_raises(Overdrawn)
    aggregate_spec = DeciderSpec(Wallet)
    aggregate_spec.given(Credited(amount=5)).when(lambda w: w.debit(2)).then(Debited(amount=2))
    after = (
        aggregate_spec.given(Credited(amount=5))
        .when(lambda w: w.debit(2))
        .then_state(lambda w: w.balance == 3)
    )
    assert after.version == 2


def test_time_travel_by_version_and_by_time(store: MemoryEventStore) -> None:
    handler = CommandHandler(store, ledger)
    for amount in (10, 20, 30, 40):
        handler.handle("w", Credit(amount))
    assert handler.load("w", as_of_version=0) == Loaded(0, 0)
    assert handler.load("w", as_of_version=2) == Loaded(30, 2)
    assert handler.load("w", as_of_version=99) == Loaded(100, 4)
    events = list(store.read("w"))
    for event in events:
        upto = [e for e in events if e.recorded_at <= event.recorded_at]
        expected = Loaded(sum(e.data.amount for e in upto), upto[-1].version)
        assert handler.load("w", as_of_time=event.recorded_at) == expected
    before_all = events[0].recorded_at - timedelta(seconds=1)
    assert handler.load("w", as_of_time=before_all) == Loaded(0, 0)
    both = handler.load("w", as_of_version=1, as_of_time=events[-1].recorded_at)
    assert both == Loaded(10, 1)
    with pytest.raises(InvalidRequest):
        handler.load("w", as_of_time=datetime(2026, 1, 1))  # naive
    with pytest.raises(InvalidRequest):
        handler.load("w", as_of_version=-1)


def test_history_lists_each_event_with_the_state_after_it(store: MemoryEventStore) -> None:
    handler = CommandHandler(store, Wallet)
    handler.handle("w", lambda w: w.credit(5))
    handler.handle("w", lambda w: w.debit(2))
    handler.handle("w", lambda w: w.credit(10))
    steps = handler.history("w")
    assert [(s.event.version, s.state.balance) for s in steps] == [(1, 5), (2, 3), (3, 13)]
    assert [type(s.event.data) for s in steps] == [Credited, Debited, Credited]
    functional = CommandHandler(store, ledger).history("w")
    assert [s.state for s in functional] == [5, 3, 13]


# -- conditional commands: expected_version (HTTP If-Match) -------------------------------


def counting(decided: list[object]) -> Decider[int, Credit | Debit, Event]:
    def decide_and_count(command: Credit | Debit, state: int) -> Sequence[Event]:
        decided.append(command)
        return decide(command, state)

    return Decider(decide_and_count, evolve, int)


def test_expected_version_appends_when_the_stream_is_at_it(store: MemoryEventStore) -> None:
    handler = CommandHandler(store, ledger)
    first = handler.handle("w", Credit(100), expected_version=0)  # 0: no stream yet
    second = handler.handle("w", Debit(30), expected_version=1)
    assert (first.version, second.version, second.state, second.replayed) == (1, 2, 70, False)
    assert [e.data for e in store.read("w")] == [Credited(amount=100), Debited(amount=30)]


def test_stale_expected_version_raises_without_deciding_or_retrying(
    store: MemoryEventStore,
) -> None:
    decided: list[object] = []
    handler = CommandHandler(store, counting(decided), max_retries=5)
    handler.handle("w", Credit(100))
    handler.handle("w", Credit(1))
    decided.clear()
    before = store.last_position()
    with pytest.raises(WrongExpectedVersion) as info:
        handler.handle("w", Debit(30), expected_version=1)
    assert (info.value.stream, info.value.expected, info.value.actual) == ("w", 1, 2)
    with pytest.raises(WrongExpectedVersion):
        handler.handle("new", Credit(1), expected_version=3)
    assert decided == []
    assert store.last_position() == before


@pytest.mark.parametrize("key", [None, "pay-1"])
def test_a_conflict_at_append_under_expected_version_is_not_retried(
    store: MemoryEventStore, key: str | None
) -> None:
    calls = 0

    def decide_then_interfere(command: Credit | Debit, state: int) -> Sequence[Event]:
        # Another writer commits between our load and our append.
        nonlocal calls
        calls += 1
        store.append("w", [Credited(amount=1)])
        return decide(command, state)

    store.append("w", [Credited(amount=100)])
    interfered = Decider(decide_then_interfere, evolve, int)
    handler = CommandHandler(store, interfered, max_retries=5, retry_delay=0)
    with pytest.raises(WrongExpectedVersion) as info:
        handler.handle("w", Debit(30), expected_version=1, idempotency_key=key)
    assert calls == 1
    assert (info.value.expected, info.value.actual) == (1, 2)
    assert [e.data for e in store.read("w")] == [Credited(amount=100), Credited(amount=1)]


def test_expected_version_with_an_empty_decision_writes_nothing(store: MemoryEventStore) -> None:
    handler = CommandHandler(store, ledger)
    handler.handle("w", Credit(5))
    result = handler.handle("w", Debit(0), expected_version=1)
    assert (result.events, result.version, result.state, result.replayed) == ((), 1, 5, False)
    with pytest.raises(WrongExpectedVersion):
        handler.handle("w", Debit(0), expected_version=0)
    assert store.last_position() == 1


def test_a_retried_if_match_request_gets_its_original_answer(store: MemoryEventStore) -> None:
    handler = CommandHandler(store, ledger)
    handler.handle("w", Credit(100))
    first = handler.handle("w", Debit(30), expected_version=1, idempotency_key="req-7")
    handler.handle("w", Credit(5))  # the stream moves on
    again = handler.handle("w", Debit(30), expected_version=1, idempotency_key="req-7")
    assert again.replayed
    assert (again.events, again.version, again.position) == (
        first.events,
        first.version,
        first.position,
    )
    assert again.state == 75  # the current state, as for every replay
    assert store.get_stream("w").version == 3  # type: ignore[union-attr]


def test_racing_deliveries_of_one_if_match_request_write_once(store: MemoryEventStore) -> None:
    CommandHandler(store, ledger).handle("w", Credit(100))
    barrier = threading.Barrier(4)
    results: list[object] = []

    def deliver() -> None:
        handler = CommandHandler(store, ledger)
        barrier.wait()
        results.append(handler.handle("w", Debit(10), expected_version=1, idempotency_key="r"))

    run_threads([deliver] * 4)
    assert [e.data for e in store.read("w")] == [Credited(amount=100), Debited(amount=10)]
    assert [(r.events, r.version) for r in results] == [((Debited(amount=10),), 2)] * 4  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", [-1, True, False, "1", 1.0])
def test_expected_version_must_be_an_int_of_zero_or_more(bad: object) -> None:
    store = MemoryEventStore()
    with pytest.raises(InvalidRequest, match="expected_version"):
        CommandHandler(store, ledger).handle("w", Credit(1), expected_version=bad)  # type: ignore[arg-type]
    assert store.last_position() == 0


# -- idempotency keys: scoped to a stream, bound to one command -------------------------


def test_an_idempotency_key_reused_for_another_command_is_rejected(any_store: EventStore) -> None:
    CommandHandler(any_store, ledger).handle("w", Credit(100))
    first = CommandHandler(any_store, ledger).handle("w", Debit(30), idempotency_key="pay-1")
    handler = CommandHandler(any_store, ledger)  # another process, later
    assert handler.handle("w", Debit(30), idempotency_key="pay-1").events == first.events
    before = any_store.last_position()
    with pytest.raises(IdempotencyKeyReused) as info:
        handler.handle("w", Debit(40), idempotency_key="pay-1")
    assert isinstance(info.value, InvalidRequest)
    assert (info.value.stream, info.value.key) == ("w", "pay-1")
    assert "pay-1" in str(info.value) and "'w'" in str(info.value)
    with pytest.raises(IdempotencyKeyReused):
        handler.handle("w", Credit(30), idempotency_key="pay-1")  # same fields, another type
    with pytest.raises(IdempotencyKeyReused):
        handler.handle("w", Debit(40), idempotency_key="pay-1", expected_version=2)
    assert any_store.last_position() == before
    stored = list(any_store.read("w"))[1]
    assert stored.metadata[COMMAND_DIGEST] == command_digest(Debit(30))
    assert stored.metadata[IDEMPOTENCY_KEY] == "pay-1"


def test_idempotency_keys_are_scoped_to_one_stream(store: MemoryEventStore) -> None:
    handler = CommandHandler(store, ledger)
    a = handler.handle("a", Credit(1), idempotency_key="k")
    b = handler.handle("b", Credit(2), idempotency_key="k")  # another stream: runs
    assert (a.replayed, b.replayed) == (False, False)
    assert [e.data for e in store.read("b")] == [Credited(amount=2)]
    assert handler.handle("a", Credit(1), idempotency_key="k").replayed


def test_events_stored_without_a_digest_still_replay(any_store: EventStore) -> None:
    # What older eventfold versions stored: the key, no digest.
    any_store.append("w", [Credited(amount=100)])
    any_store.append(
        "w",
        [
            NewEvent(
                data=Debited(amount=30),
                id=idempotent_event_id("w", "old", 0),
                metadata={IDEMPOTENCY_KEY: "old"},
            )
        ],
    )
    handler = CommandHandler(any_store, ledger)
    again = handler.handle("w", Debit(30), idempotency_key="old")
    assert (again.replayed, again.events, again.version) == (True, (Debited(amount=30),), 2)
    # Nothing to compare with: an old key replays whatever command comes with it.
    assert handler.handle("w", Debit(99), idempotency_key="old").replayed
    assert [e.version for e in any_store.read("w")] == [1, 2]


def test_a_racing_different_command_with_the_same_key_is_rejected(
    store: MemoryEventStore,
) -> None:
    raced = False

    def decide_after_a_race(command: Credit | Debit, state: int) -> Sequence[Event]:
        # Between our idempotency check and our append, another process handles
        # another command with the same key.
        nonlocal raced
        if not raced:
            raced = True
            CommandHandler(store, ledger).handle("w", Debit(30), idempotency_key="k")
        return decide(command, state)

    CommandHandler(store, ledger).handle("w", Credit(100))
    handler = CommandHandler(store, Decider(decide_after_a_race, evolve, int))
    with pytest.raises(IdempotencyKeyReused):
        handler.handle("w", Debit(40), idempotency_key="k")
    assert [e.data for e in store.read("w")] == [Credited(amount=100), Debited(amount=30)]


def test_concurrent_different_commands_with_one_key_write_one(store: MemoryEventStore) -> None:
    CommandHandler(store, ledger).handle("w", Credit(100))
    barrier = threading.Barrier(4)
    written: list[int] = []
    rejected: list[int] = []

    def deliver(amount: int) -> None:
        handler = CommandHandler(store, ledger, max_retries=10, retry_delay=0.0005)
        barrier.wait()
        try:
            result = handler.handle("w", Debit(amount), idempotency_key="same")
        except IdempotencyKeyReused:
            rejected.append(amount)
        else:
            assert not result.replayed
            written.append(amount)

    run_threads([lambda amount=amount: deliver(amount) for amount in (1, 2, 3, 4)])  # type: ignore[misc]
    assert len(written) == 1 and sorted(written + rejected) == [1, 2, 3, 4]
    assert [e.data for e in store.read("w")] == [
        Credited(amount=100),
        Debited(amount=written[0]),
    ]


def test_command_digest_is_canonical_and_names_the_type(caplog: pytest.LogCaptureFixture) -> None:
    class Order(msgspec.Struct, frozen=True):
        lines: dict[str, int]
        note: str = ""

    digest = command_digest(Debit(30))
    assert digest is not None and digest.startswith("sha256:")
    assert command_digest(Debit(30)) == digest
    assert command_digest(Debit(31)) != digest
    assert command_digest(Credit(30)) != digest  # the type name is part of it
    assert command_digest(Order({"a": 1, "b": 2})) == command_digest(Order({"b": 2, "a": 1}))
    assert command_digest(lambda w: w.credit(1)) is None  # code, not data

    class Opaque:
        def __init__(self, amount: int) -> None:
            self.amount = amount

    with caplog.at_level(logging.WARNING, logger="eventfold"):
        assert command_digest(Opaque(1)) is None
        assert command_digest(Opaque(2)) is None
    assert caplog.text.count("have no digest") == 1


def test_callable_commands_are_checked_with_an_explicit_digest(store: MemoryEventStore) -> None:
    handler = CommandHandler(store, Wallet)
    handler.handle("w", lambda w: w.credit(10), idempotency_key="k1")
    # A callable has no digest of its own: a reused key replays, as before.
    assert handler.handle("w", lambda w: w.credit(99), idempotency_key="k1").replayed
    handler.handle("w", lambda w: w.credit(5), idempotency_key="k2", command_digest="credit:5")
    again = handler.handle(
        "w", lambda w: w.credit(5), idempotency_key="k2", command_digest="credit:5"
    )
    assert again.replayed and again.events == (Credited(amount=5),)
    with pytest.raises(IdempotencyKeyReused):
        handler.handle("w", lambda w: w.credit(7), idempotency_key="k2", command_digest="credit:7")
    assert handler.load("w").state.balance == 15


def test_command_digest_needs_a_key_and_a_non_empty_str() -> None:
    handler = CommandHandler(MemoryEventStore(), ledger)
    with pytest.raises(InvalidRequest, match="only stored with an idempotency_key"):
        handler.handle("w", Credit(1), command_digest="x")
    with pytest.raises(InvalidRequest, match="command_digest"):
        handler.handle("w", Credit(1), idempotency_key="k", command_digest="")
    with pytest.raises(InvalidRequest, match="command_digest"):
        handler.handle("w", Credit(1), idempotency_key="k", command_digest=7)  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_async_handler_expected_version_and_key_reuse(tmp_path: Path, backend: str) -> None:
    store = (
        AsyncMemoryEventStore()
        if backend == "memory"
        else AsyncSqliteEventStore(tmp_path / "a.db", durability="off")
    )
    async with store:
        handler = AsyncCommandHandler(store, ledger)
        await handler.handle("w", Credit(100), expected_version=0)
        paid = await handler.handle("w", Debit(30), expected_version=1, idempotency_key="p")
        with pytest.raises(WrongExpectedVersion):
            await handler.handle("w", Debit(1), expected_version=1)
        again = await handler.handle("w", Debit(30), expected_version=1, idempotency_key="p")
        assert again.replayed and again.events == paid.events
        with pytest.raises(IdempotencyKeyReused):
            await handler.handle("w", Debit(31), idempotency_key="p")
        with pytest.raises(InvalidRequest):
            await handler.handle("w", Debit(1), expected_version=-1)
        assert (await handler.load("w")).state == 70


def test_pydantic_commands_have_a_digest_so_a_reused_key_is_caught(
    store: MemoryEventStore, caplog: pytest.LogCaptureFixture
) -> None:
    pydantic = pytest.importorskip("pydantic")

    class Pay(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        amount: int

    def decide(command: Pay, balance: int) -> list[Event]:
        return [Debited(amount=command.amount)]

    handler = CommandHandler(store, Decider(decide, evolve, int))
    assert command_digest(Pay(amount=5)) == command_digest(Pay(amount=5))
    assert command_digest(Pay(amount=5)) != command_digest(Pay(amount=6))
    first = handler.handle("p", Pay(amount=5), idempotency_key="pay-1")
    assert handler.handle("p", Pay(amount=5), idempotency_key="pay-1").replayed
    with pytest.raises(IdempotencyKeyReused):
        handler.handle("p", Pay(amount=6), idempotency_key="pay-1")
    assert [e.data for e in store.read("p")] == list(first.events)
    assert "no digest" not in caplog.text
