"""Snapshots through the command handler, on every store."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from eventfold import (
    Aggregate,
    AsyncCommandHandler,
    AsyncSqliteEventStore,
    CommandHandler,
    Decider,
    Event,
    InvalidRequest,
    MemoryEventStore,
    StoreError,
    WrongExpectedVersion,
)
from eventfold.bus import EventBus
from eventfold.snapshots import SnapshotPolicy
from eventfold.store import EventStore
from tests.test_commands import Credit, Credited, Debit, Wallet, ledger


@dataclass(frozen=True)
class Tally:
    total: int = 0
    count: int = 0


def tally_evolve(state: Tally, event: Any) -> Tally:
    return Tally(state.total + event.amount, state.count + 1)


tally: Decider[Tally, Credit, Any] = Decider(
    lambda command, state: [Credited(amount=command.amount)], tally_evolve, Tally
)


@pytest.fixture
def store(any_store: EventStore) -> EventStore:
    return any_store


def test_snapshots_are_saved_every_n_versions(store: EventStore) -> None:
    handler = CommandHandler(store, tally, snapshots=SnapshotPolicy(every=3))
    for amount in range(1, 8):
        handler.handle("t", Credit(amount))
    snapshot = store.load_snapshot("t")
    assert snapshot is not None and snapshot.version == 6
    assert msgspec.json.decode(snapshot.data) == {"total": 21, "count": 6}
    older = store.load_snapshot("t", max_version=5)
    assert older is not None and older.version == 3
    assert handler.load("t").state == Tally(28, 7)


def test_load_starts_from_the_snapshot_and_schema_changes_ignore_it(store: EventStore) -> None:
    policy: SnapshotPolicy[Tally] = SnapshotPolicy(every=2)
    handler = CommandHandler(store, tally, snapshots=policy)
    for _ in range(4):
        handler.handle("t", Credit(1))
    assert policy.state_type is not None
    # Plant a snapshot that disagrees with the events: a load that uses it shows it.
    store.save_snapshot("t", 4, policy.state_type, 1, b'{"total":1000,"count":4}')
    assert handler.load("t").state == Tally(1000, 4)
    handler.handle("t", Credit(1))
    assert handler.load("t").state == Tally(1001, 5)
    # A new state schema: old snapshots are ignored, the state is rebuilt from events.
    bumped = CommandHandler(store, tally, snapshots=SnapshotPolicy(every=2, schema_version=2))
    assert bumped.load("t").state == Tally(5, 5)
    assert bumped.prune_snapshots() == 2
    assert store.load_snapshot("t") is None
    assert bumped.rebuild_snapshot("t") == 5
    rebuilt = store.load_snapshot("t")
    assert rebuilt is not None and (rebuilt.version, rebuilt.schema_version) == (5, 2)


def test_time_travel_uses_older_snapshots(store: EventStore) -> None:
    handler = CommandHandler(store, tally, snapshots=SnapshotPolicy(every=2))
    for amount in (1, 2, 4, 8, 16):
        handler.handle("t", Credit(amount))
    assert [handler.load("t", as_of_version=v).state.total for v in range(6)] == [
        0,
        1,
        3,
        7,
        15,
        31,
    ]


def test_failed_snapshot_write_never_fails_the_command(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenSnapshots(MemoryEventStore):
        def save_snapshot(self, *args: Any, **kwargs: Any) -> None:
            raise StoreError("disk full")

    store = BrokenSnapshots()
    handler = CommandHandler(store, tally, snapshots=SnapshotPolicy(every=1))
    with caplog.at_level(logging.WARNING, logger="eventfold"):
        result = handler.handle("t", Credit(5))
    assert result.state == Tally(5, 1)
    assert [e.data for e in store.read("t")] == [Credited(amount=5)]
    assert "disk full" in caplog.text


class Tagger(Aggregate):
    def __init__(self) -> None:
        self.names: set[str] = set()

    def apply(self, event: Any) -> None:
        self.names.add(str(event.amount))


def test_states_that_do_not_round_trip_are_not_snapshotted(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    handler = CommandHandler(store, Tagger, snapshots=SnapshotPolicy(every=1))
    with caplog.at_level(logging.WARNING, logger="eventfold"):
        handler.handle("t", lambda t: t.record(Credited(amount=1)))
        handler.handle("t", lambda t: t.record(Credited(amount=2)))
    # An aggregate's set attribute would come back as a list: refused, not altered.
    assert store.load_snapshot("t") is None
    assert handler.load("t").state.names == {"1", "2"}
    assert caplog.text.count("snapshots disabled") == 1


def test_class_style_aggregates_are_snapshotted(store: EventStore) -> None:
    handler = CommandHandler(store, Wallet, snapshots=SnapshotPolicy(every=2))
    handler.handle("w", lambda w: w.credit(10))
    handler.handle("w", lambda w: w.debit(3))
    handler.handle("w", lambda w: w.credit(1))
    snapshot = store.load_snapshot("w")
    assert snapshot is not None and snapshot.version == 2
    assert msgspec.json.decode(snapshot.data) == {
        "eventfold:aggregate": 2,
        "attributes": {"balance": 7, "version": 2},
        "slots": {},
    }
    loaded = handler.load("w")
    assert isinstance(loaded.state, Wallet)
    assert (loaded.state.balance, loaded.state.version, loaded.version) == (8, 3, 3)


def test_idempotency_key_older_than_the_snapshot_is_still_found(store: EventStore) -> None:
    handler = CommandHandler(store, ledger, snapshots=SnapshotPolicy(every=2))
    handler.handle("w", Credit(100))
    first = handler.handle("w", Debit(30), idempotency_key="pay-1")
    for _ in range(5):
        handler.handle("w", Credit(1))
    snapshot = store.load_snapshot("w")
    assert snapshot is not None and snapshot.version > first.version
    again = handler.handle("w", Debit(30), idempotency_key="pay-1")
    assert again.replayed
    assert (again.version, again.events, again.state) == (2, first.events, 75)
    assert store.get_stream("w").version == 7  # type: ignore[union-attr]


def test_policy_validation() -> None:
    with pytest.raises(InvalidRequest):
        SnapshotPolicy()
    with pytest.raises(InvalidRequest):
        SnapshotPolicy(every=0)
    with pytest.raises(InvalidRequest):
        SnapshotPolicy(every=2, when=lambda s, v: True)
    with pytest.raises(InvalidRequest):
        SnapshotPolicy(every=2, schema_version=0)
    with pytest.raises(InvalidRequest):
        CommandHandler(MemoryEventStore(), ledger).rebuild_snapshot("s")


def test_when_function_policy(store: EventStore) -> None:
    policy: SnapshotPolicy[Tally] = SnapshotPolicy(when=lambda state, version: state.total > 10)
    handler = CommandHandler(store, tally, snapshots=policy)
    handler.handle("t", Credit(5))
    assert store.load_snapshot("t") is None
    handler.handle("t", Credit(6))
    snapshot = store.load_snapshot("t")
    assert snapshot is not None and snapshot.version == 2


@pytest.mark.asyncio
async def test_async_handler_uses_snapshots_and_the_bus(tmp_path: Path) -> None:
    published: list[Any] = []
    bus = EventBus()
    bus.subscribe(published.append)
    async with AsyncSqliteEventStore(tmp_path / "a.db", durability="off") as store:
        handler = AsyncCommandHandler(store, tally, snapshots=SnapshotPolicy(every=2), bus=bus)
        for amount in (1, 2, 3):
            await handler.handle("t", Credit(amount))
        snapshot = await store.load_snapshot("t")
        assert snapshot is not None and snapshot.version == 2
        assert (await handler.load("t")).state == Tally(6, 3)
        assert (await handler.load("t", as_of_version=2)).state == Tally(3, 2)
        assert [e.version for e in published] == [1, 2, 3]
        assert await handler.rebuild_snapshot("t") == 3


# -- class-style aggregates: a snapshot restores what a replay gives, or is not written ----


class Received(Event, frozen=True):
    __event_type__ = "tests.snapshots.Received"
    quantity: int


class Reserved(Event, frozen=True):
    __event_type__ = "tests.snapshots.Reserved"
    quantity: int
    order: str = ""


class OutOfStock(Exception):
    pass


class Stock(Aggregate):
    """Reservations counted in a private attribute whose value is a class default."""

    _reserved = 0

    def __init__(self) -> None:
        self.on_hand = 0

    def reserve(self, quantity: int) -> None:
        if self._reserved + quantity > self.on_hand:
            raise OutOfStock(f"{self._reserved} + {quantity} > {self.on_hand}")
        self.record(Reserved(quantity=quantity))

    def apply(self, event: Any) -> None:
        match event:
            case Received(quantity=quantity):
                self.on_hand += quantity
            case Reserved(quantity=quantity):
                self._reserved += quantity


class Holds(Aggregate):
    """Private state set in ``__init__``, and an attribute a later event deletes."""

    def __init__(self) -> None:
        self.on_hand = 0
        self._holds: dict[str, int] = {}
        self._draft = True

    def reserve(self, order: str, quantity: int) -> None:
        if sum(self._holds.values()) + quantity > self.on_hand:
            raise OutOfStock(order)
        self.record(Reserved(quantity=quantity, order=order))

    def apply(self, event: Any) -> None:
        match event:
            case Received(quantity=quantity):
                self.on_hand += quantity
                if hasattr(self, "_draft"):
                    del self._draft
            case Reserved(quantity=quantity, order=order):
                self._holds[order] = self._holds.get(order, 0) + quantity


class Slotted(Aggregate):
    """State in ``__slots__``, one of them name-mangled."""

    __slots__ = ("__reserved", "on_hand", "unused")

    def __init__(self) -> None:
        self.on_hand = 0
        self.__reserved = 0

    def reserve(self, quantity: int) -> None:
        if self.__reserved + quantity > self.on_hand:
            raise OutOfStock(str(quantity))
        self.record(Reserved(quantity=quantity))

    def apply(self, event: Any) -> None:
        match event:
            case Received(quantity=quantity):
                self.on_hand += quantity
            case Reserved(quantity=quantity):
                self.__reserved += quantity


def _everything(aggregate: Aggregate) -> dict[str, Any]:
    slots = [s for c in type(aggregate).__mro__ for s in getattr(c, "__slots__", ())]
    names = [f"_Slotted{s}" if s.startswith("__") else s for s in slots]
    held = {n: getattr(aggregate, n) for n in names if hasattr(aggregate, n)}
    return {**vars(aggregate), **held}


def _restored_and_replayed(
    store: EventStore, model: type[Aggregate], stream: str
) -> tuple[Any, Any]:
    """The state loaded from the newest snapshot, and the one a full replay gives."""
    from_snapshot = CommandHandler(store, model, snapshots=SnapshotPolicy(every=1000)).load(stream)
    replayed = CommandHandler(store, model).load(stream)
    return from_snapshot.state, replayed.state


def test_private_state_with_a_class_default_is_snapshotted(store: EventStore) -> None:
    handler = CommandHandler(store, Stock, snapshots=SnapshotPolicy(every=2))
    handler.handle("sku-1", lambda s: s.record(Received(quantity=10)))
    handler.handle("sku-1", lambda s: s.reserve(6))
    snapshot = store.load_snapshot("sku-1")
    assert snapshot is not None and snapshot.version == 2
    # A new handler (a new release) loads from the snapshot: 6 are still reserved.
    reloaded = CommandHandler(store, Stock, snapshots=SnapshotPolicy(every=2))
    with pytest.raises(OutOfStock, match="6 \\+ 6 > 10"):
        reloaded.handle("sku-1", lambda s: s.reserve(6))
    assert reloaded.handle("sku-1", lambda s: s.reserve(4)).version == 3
    restored, replayed = _restored_and_replayed(store, Stock, "sku-1")
    assert vars(restored) == vars(replayed) == {"on_hand": 10, "_reserved": 10, "version": 3}


def test_private_state_set_in_init_is_restored_exactly(store: EventStore) -> None:
    handler = CommandHandler(store, Holds, snapshots=SnapshotPolicy(every=2))
    handler.handle("sku-2", lambda s: s.record(Received(quantity=10)))
    handler.handle("sku-2", lambda s: s.reserve("o-1", 8))
    assert store.load_snapshot("sku-2") is not None
    reloaded = CommandHandler(store, Holds, snapshots=SnapshotPolicy(every=2))
    with pytest.raises(OutOfStock, match="o-2"):
        reloaded.handle("sku-2", lambda s: s.reserve("o-2", 3))
    restored, replayed = _restored_and_replayed(store, Holds, "sku-2")
    # Same instance dict: `_draft`, set by __init__ and deleted by an event, stays deleted.
    assert vars(restored) == vars(replayed) == {"on_hand": 10, "_holds": {"o-1": 8}, "version": 2}


def test_slotted_aggregates_are_snapshotted_with_their_slots(store: EventStore) -> None:
    handler = CommandHandler(store, Slotted, snapshots=SnapshotPolicy(every=2))
    handler.handle("sku-3", lambda s: s.record(Received(quantity=10)))
    handler.handle("sku-3", lambda s: s.reserve(7))
    reloaded = CommandHandler(store, Slotted, snapshots=SnapshotPolicy(every=2))
    with pytest.raises(OutOfStock):
        reloaded.handle("sku-3", lambda s: s.reserve(4))
    snapshot = store.load_snapshot("sku-3")
    assert snapshot is not None
    assert msgspec.json.decode(snapshot.data)["slots"] == {"_Slotted__reserved": 7, "on_hand": 10}
    restored, replayed = _restored_and_replayed(store, Slotted, "sku-3")
    assert _everything(restored) == _everything(replayed)
    assert not hasattr(restored, "unused")


class Mood(enum.IntEnum):
    CALM = 1


class Plain:
    def __init__(self, value: int) -> None:
        self.value = value


@dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    "make",
    [
        lambda: {"a", "b"},
        lambda: (1, 2),
        lambda: {1: "one"},
        lambda: [1, (2, 3)],
        lambda: datetime(2026, 1, 1, tzinfo=UTC),
        lambda: Plain(1),
        lambda: Point(1),
        lambda: Mood.CALM,
        lambda: {Mood.CALM.name: True, "other": [{"deep": (1,)}]},
    ],
    ids=["set", "tuple", "int-keys", "nested-tuple", "datetime", "object", "dataclass",
         "int-enum", "deep-tuple"],
)  # fmt: skip
def test_private_attributes_that_would_come_back_altered_refuse_the_snapshot(
    store: EventStore, caplog: pytest.LogCaptureFixture, make: Any
) -> None:
    class Keeper(Aggregate):
        def apply(self, event: Any) -> None:
            self._kept = make()

    handler = CommandHandler(store, Keeper, snapshots=SnapshotPolicy(every=1))
    with caplog.at_level(logging.WARNING, logger="eventfold"):
        handler.handle("k", lambda k: k.record(Credited(amount=1)))
        handler.handle("k", lambda k: k.record(Credited(amount=2)))
    assert store.load_snapshot("k") is None
    assert caplog.text.count("snapshots disabled") == 1
    assert "'_kept'" in caplog.text  # the warning names the attribute
    loaded = handler.load("k").state
    assert type(loaded._kept) is type(make()) and loaded.version == 2


OLD_FORMAT = b'{"on_hand":10,"version":2}'  # what eventfold wrote before: public attributes


def test_snapshots_in_the_old_public_attributes_format_are_not_trusted(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    policy: SnapshotPolicy[Stock] = SnapshotPolicy(every=100)
    handler = CommandHandler(store, Stock, snapshots=policy)
    handler.handle("sku-4", lambda s: s.record(Received(quantity=10)))
    handler.handle("sku-4", lambda s: s.reserve(6))
    assert policy.state_type is not None and store.load_snapshot("sku-4") is None
    store.save_snapshot("sku-4", 2, policy.state_type, 1, OLD_FORMAT)
    with caplog.at_level(logging.WARNING, logger="eventfold"):
        assert vars(handler.load("sku-4").state) == {"on_hand": 10, "_reserved": 6, "version": 2}
        with pytest.raises(OutOfStock):
            handler.handle("sku-4", lambda s: s.reserve(6))
    assert caplog.text.count("written by an older eventfold") == 1
    # The maintenance step writes a snapshot in the current format, which is used.
    assert handler.rebuild_snapshot("sku-4") == 2
    snapshot = store.load_snapshot("sku-4")
    assert snapshot is not None and msgspec.json.decode(snapshot.data)["eventfold:aggregate"] == 2
    store.append("sku-4", [Reserved(quantity=1)])
    restored, replayed = _restored_and_replayed(store, Stock, "sku-4")
    assert vars(restored) == vars(replayed)


def test_undecodable_snapshots_are_ignored_and_logged_with_their_version(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    policy: SnapshotPolicy[Tally] = SnapshotPolicy(every=100)
    handler = CommandHandler(store, tally, snapshots=policy)
    handler.handle("t", Credit(1))
    handler.handle("t", Credit(2))
    assert policy.state_type is not None
    store.save_snapshot("t", 2, policy.state_type, 1, b"not json")
    with caplog.at_level(logging.WARNING, logger="eventfold"):
        assert handler.load("t").state == Tally(3, 2)
    assert "ignoring undecodable snapshot of t@2" in caplog.text


def test_conditional_commands_keep_snapshots_and_the_bus(store: EventStore) -> None:
    published: list[Any] = []
    bus = EventBus()
    bus.subscribe(published.append)
    handler = CommandHandler(store, tally, snapshots=SnapshotPolicy(every=2), bus=bus)
    for version in range(3):
        handler.handle("t", Credit(version + 1), expected_version=version)
    with pytest.raises(WrongExpectedVersion):
        handler.handle("t", Credit(100), expected_version=1)
    snapshot = store.load_snapshot("t")
    assert snapshot is not None and snapshot.version == 2
    later = CommandHandler(store, tally, snapshots=SnapshotPolicy(every=2), bus=bus)
    fourth = later.handle("t", Credit(4), expected_version=3, idempotency_key="req-4")
    assert fourth.state == Tally(10, 4)
    snapshot = store.load_snapshot("t")
    assert snapshot is not None and snapshot.version == 4
    retried = later.handle("t", Credit(4), expected_version=3, idempotency_key="req-4")
    assert retried.replayed and retried.version == 4
    assert [e.version for e in published] == [1, 2, 3, 4]  # a replay publishes nothing
