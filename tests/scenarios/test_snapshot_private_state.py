"""An inventory whose reservations live in private state, snapshotted, across a release.

The story: release 1 runs an inventory aggregate whose reservation bookkeeping
is private (a dict set in ``__init__`` and a counter with a class default),
snapshotted every few events. The service is restarted with release 2 (a new
store object on the same database, a new handler, a new policy). Release 2
must refuse exactly the reservations a full replay of the stream refuses: a
snapshot that lost the private state would accept 18 units reserved against
10 in stock, one restored without ``__init__`` would fail every load. Then a
snapshot as an earlier eventfold wrote it (public attributes only) is found
at the head of the stream and must not be trusted. SQLite file and
PostgreSQL, the databases a release really reopens.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from eventfold import Aggregate, CommandHandler, Event, SqliteEventStore
from eventfold.snapshots import SnapshotPolicy
from eventfold.store import EventStore
from eventfold.store.postgres import PostgresEventStore, migrate
from tests.support.pg import new_schema_name

EVERY = 3
SKU = "inventory-sku-42"


class StockReceived(Event, frozen=True):
    __event_type__ = "scenario.inventory.StockReceived"
    quantity: int


class StockReserved(Event, frozen=True):
    __event_type__ = "scenario.inventory.StockReserved"
    order: str
    quantity: int


class ReservationReleased(Event, frozen=True):
    __event_type__ = "scenario.inventory.ReservationReleased"
    order: str


class Refused(Exception):
    """A business rule of the inventory said no."""


class Inventory(Aggregate):
    _reserved_total = 0  # private, from a class default until the first reservation

    def __init__(self) -> None:
        self.on_hand = 0
        self._holds: dict[str, int] = {}  # private, set in __init__

    def receive(self, quantity: int) -> None:
        self.record(StockReceived(quantity=quantity))

    def reserve(self, order: str, quantity: int) -> None:
        if order in self._holds:
            raise Refused(f"{order} already holds {self._holds[order]}")
        available = self.on_hand - self._reserved_total
        if quantity > available:
            raise Refused(f"{order}: {quantity} wanted, {available} available")
        self.record(StockReserved(order=order, quantity=quantity))

    def release(self, order: str) -> None:
        if order not in self._holds:
            raise Refused(f"{order} holds nothing")
        self.record(ReservationReleased(order=order))

    def apply(self, event: Any) -> None:
        match event:
            case StockReceived(quantity=quantity):
                self.on_hand += quantity
            case StockReserved(order=order, quantity=quantity):
                self._holds[order] = quantity
                self._reserved_total += quantity
            case ReservationReleased(order=order):
                self._reserved_total -= self._holds.pop(order)


Command = Callable[[Inventory], None]


def reserve(order: str, quantity: int) -> Command:
    return lambda inventory: inventory.reserve(order, quantity)


def release(order: str) -> Command:
    return lambda inventory: inventory.release(order)


def receive(quantity: int) -> Command:
    return lambda inventory: inventory.receive(quantity)


def workload(seed: int, count: int) -> list[Command]:
    """Reservations and releases over a few orders, many of them refused."""
    rng = random.Random(seed)
    commands: list[Command] = []
    for _ in range(count):
        order = f"order-{rng.randint(1, 6)}"
        roll = rng.random()
        if roll < 0.6:
            commands.append(reserve(order, rng.randint(1, 6)))
        elif roll < 0.9:
            commands.append(release(order))
        else:
            commands.append(receive(rng.randint(1, 3)))
    return commands


def replay_verdict(store: EventStore, command: Command) -> str | None:
    """What a full replay (no snapshot) decides: None to accept, else the refusal."""
    state = CommandHandler(store, Inventory).load(SKU).state
    try:
        command(state)
    except Refused as refusal:
        return str(refusal)
    return None


def handled(handler: CommandHandler[Any, Any], command: Command) -> str | None:
    try:
        handler.handle(SKU, command)
    except Refused as refusal:
        return str(refusal)
    return None


def whole_state(store: EventStore, policy: SnapshotPolicy[Any] | None) -> dict[str, Any]:
    return dict(vars(CommandHandler(store, Inventory, snapshots=policy).load(SKU).state))


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """Opens a new store object on one database each call: a process of a release."""
    opened: list[Any] = []
    if request.param == "sqlite":
        path = tmp_path / "inventory.db"

        def factory() -> Any:
            opened.append(SqliteEventStore(path))
            return opened[-1]
    else:
        url = request.getfixturevalue("pg_database")
        schema = new_schema_name()
        migrate(url, schema=schema)

        def factory() -> Any:
            opened.append(PostgresEventStore(url, schema=schema, max_size=2))
            return opened[-1]

    yield factory
    for store in opened:
        store.close()


def test_a_new_release_refuses_exactly_what_a_replay_refuses(
    open_store: Callable[[], Any],
) -> None:
    # Release 1: 10 units in stock, 8 reserved, a snapshot at version 3.
    release_1 = open_store()
    handler_1 = CommandHandler(release_1, Inventory, snapshots=SnapshotPolicy(every=EVERY))
    for command in (receive(10), reserve("order-a", 5), reserve("order-b", 3)):
        assert handled(handler_1, command) is None
    assert release_1.load_snapshot(SKU) is not None
    release_1.close()

    # Release 2 reloads from the snapshot: 10 more would make 18 reserved of 10.
    release_2 = open_store()
    handler_2 = CommandHandler(release_2, Inventory, snapshots=SnapshotPolicy(every=EVERY))
    assert handled(handler_2, reserve("order-c", 10)) == "order-c: 10 wanted, 2 available"
    assert handled(handler_2, reserve("order-a", 1)) == "order-a already holds 5"
    snapshot = release_2.load_snapshot(SKU)
    assert snapshot is not None and snapshot.version == 3  # what release 2 started from
    stored = msgspec.json.decode(snapshot.data)["attributes"]
    assert (stored["_holds"], stored["_reserved_total"]) == ({"order-a": 5, "order-b": 3}, 8)
    assert handled(handler_2, reserve("order-c", 2)) is None

    # Then a long mixed workload: every verdict is the one a full replay gives.
    verdicts = {"accepted": 0, "refused": 0}
    for command in workload(seed=42, count=60):
        expected = replay_verdict(release_2, command)
        assert handled(handler_2, command) == expected
        verdicts["refused" if expected else "accepted"] += 1
        assert whole_state(release_2, handler_2.snapshots) == whole_state(release_2, None)
    assert verdicts["accepted"] >= 10 and verdicts["refused"] >= 10  # both paths exercised
    version = release_2.get_stream(SKU).version
    snapshot = release_2.load_snapshot(SKU)
    assert snapshot is not None and snapshot.version == version - version % EVERY > 3


def test_snapshots_an_earlier_eventfold_wrote_are_not_trusted(
    open_store: Callable[[], Any],
) -> None:
    # What an earlier eventfold release stored: no snapshot in the new format yet,
    # then one of public attributes only at the head of the stream.
    earlier = open_store()
    for event in (
        StockReceived(quantity=10),
        StockReserved(order="order-a", quantity=5),
        StockReserved(order="order-b", quantity=3),
    ):
        earlier.append(SKU, [event])
    state_type = f"{Inventory.__module__}.{Inventory.__qualname__}"
    earlier.save_snapshot(SKU, 3, state_type, 1, b'{"on_hand":10,"version":3}')
    earlier.close()

    upgraded = open_store()
    handler = CommandHandler(upgraded, Inventory, snapshots=SnapshotPolicy(every=EVERY))
    assert handled(handler, reserve("order-c", 10)) == "order-c: 10 wanted, 2 available"
    assert handled(handler, reserve("order-c", 2)) is None
    assert handled(handler, reserve("order-d", 1)) == "order-d: 1 wanted, 0 available"
    assert handled(handler, release("order-a")) is None  # version 5
    assert handled(handler, reserve("order-d", 5)) is None  # version 6: a new snapshot
    snapshot = upgraded.load_snapshot(SKU)
    assert snapshot is not None and snapshot.version == 6
    assert whole_state(upgraded, handler.snapshots) == whole_state(upgraded, None)
    assert whole_state(upgraded, None) == {
        "on_hand": 10,
        "_holds": {"order-b": 3, "order-c": 2, "order-d": 5},
        "_reserved_total": 10,
        "version": 6,
    }
