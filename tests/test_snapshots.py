"""Snapshots through the command handler, on every store."""

from __future__ import annotations

import logging
from dataclasses import dataclass
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
    InvalidRequest,
    MemoryEventStore,
    StoreError,
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
    assert msgspec.json.decode(snapshot.data) == {"balance": 7, "version": 2}
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
