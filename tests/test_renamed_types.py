"""A renamed type keeps its events in every type filter: read_all, subscribe,
projections, process managers and inline projections match the old stored
name too, exactly as ``read()`` decodes it as the new class."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from eventfold import ConfigurationError, MemoryEventStore, RecordedEvent
from eventfold.processes import Dispatch, ProcessManager
from eventfold.projections import Projection, ProjectionContext, ProjectionRunner, attach_inline
from eventfold.serialization import Serializer, TypeRegistry
from eventfold.store import EventStore


class ItemAdded(msgspec.Struct, frozen=True):
    """Release 1's name for an order line."""

    sku: str
    price: str


class OrderLineAdded(msgspec.Struct, frozen=True):
    """Release 2: the same event under a new class and type name."""

    sku: str
    price: str


class OrderPlaced(msgspec.Struct, frozen=True):
    order: str


OLD, NEW = "shop.ItemAdded", "shop.OrderLineAdded"


def release_1() -> Serializer:
    registry = TypeRegistry()
    registry.register(ItemAdded, name=OLD)
    registry.register(OrderPlaced, name="shop.OrderPlaced")
    return Serializer(registry)


def release_2() -> Serializer:
    registry = TypeRegistry()
    registry.register(OrderLineAdded, name=NEW)
    registry.register(OrderPlaced, name="shop.OrderPlaced")
    registry.alias(OLD, NEW)
    return Serializer(registry)


@pytest.fixture
def store(any_store: EventStore) -> Iterator[EventStore]:
    """Two lines written by release 1, one by release 2 (the store runs release 2)."""
    any_store.serializer = release_1()
    any_store.append("order-1", [OrderPlaced("order-1"), ItemAdded("a", "19.00")])
    any_store.append("order-1", [ItemAdded("b", "50.00")])
    any_store.serializer = release_2()
    any_store.append("order-1", [OrderLineAdded("c", "99.00")])
    yield any_store


def lines(events: list[RecordedEvent]) -> list[tuple[str, str]]:
    return [(e.data.sku, e.data.price) for e in events if isinstance(e.data, OrderLineAdded)]


EVERY_LINE = [("a", "19.00"), ("b", "50.00"), ("c", "99.00")]


def test_read_all_with_the_new_name_finds_the_old_events(store: EventStore) -> None:
    assert lines(list(store.read("order-1"))) == EVERY_LINE
    assert lines(list(store.read_all(types=[NEW]))) == EVERY_LINE
    assert lines(list(store.read_all(types=[OLD]))) == EVERY_LINE  # the old name means the same
    assert [e.type for e in store.read_all(types=[NEW])] == [OLD, OLD, NEW]  # as stored
    assert lines(list(store.read_all(types=[NEW], limit=2))) == EVERY_LINE[:2]
    (placed,) = store.read_all(types=["shop.OrderPlaced"])
    assert placed.data == OrderPlaced("order-1")


def test_subscribe_with_the_new_name_delivers_the_old_events(store: EventStore) -> None:
    received: list[RecordedEvent] = []
    done = threading.Event()

    def consume() -> None:
        # Ends when three events came, or when the test has given up (done is set).
        for event in store.subscribe(types=[NEW], poll_interval=0.05):
            received.append(event)
            if len(received) == 3 or done.is_set():
                return

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    consumer.join(timeout=10)
    done.set()
    store.append("order-9", [OrderLineAdded("z", "0.00")])  # wakes a consumer still waiting
    consumer.join(timeout=10)
    assert lines(received[:3]) == EVERY_LINE


def test_a_rebuilt_read_model_keeps_every_line(store: EventStore) -> None:
    totals: dict[str, tuple[int, Decimal]] = {}

    def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
        count, total = totals.get(event.stream, (0, Decimal(0)))
        totals[event.stream] = (count + 1, total + Decimal(event.data.price))

    projection = Projection(
        f"order-totals-{uuid.uuid4().hex[:8]}", handle, types=[NEW], in_memory=True
    )
    runner = ProjectionRunner(store, projection)
    runner.rebuild()
    assert totals == {"order-1": (3, Decimal("168.00"))}


def test_a_process_manager_reacts_to_the_old_events(store: EventStore) -> None:
    seen: list[str] = []

    class Recorder:
        def handle(self, stream: str, command: Any, **_: Any) -> None:
            seen.append(command)

    manager = ProcessManager(
        f"pm-{uuid.uuid4().hex[:8]}",
        lambda event: [Dispatch(Recorder(), "audit", event.data.sku)],  # type: ignore[arg-type]
        types=[NEW],
    )
    ProjectionRunner(store, manager.projection).run_once()
    assert seen == ["a", "b", "c"]


def test_an_inline_projection_declared_with_the_old_name_sees_new_appends() -> None:
    store = MemoryEventStore(serializer=release_2())
    seen: list[str] = []
    projection = Projection("inline", lambda ctx, e: seen.append(e.data.sku), types=[OLD])
    attach_inline(store, projection)
    store.append("order-2", [OrderLineAdded("d", "1.00"), OrderPlaced("order-2")])
    assert seen == ["d"]


def test_renames_chain_and_cannot_loop() -> None:
    registry = TypeRegistry()
    registry.register(OrderLineAdded, name="v3")
    registry.alias("v1", "v2")
    registry.alias("v2", "v3")
    assert sorted(registry.stored_names(["v3"])) == ["v1", "v2", "v3"]
    assert sorted(registry.stored_names(["v1"])) == ["v1", "v2", "v3"]
    assert registry.stored_names(["unrelated"]) == ["unrelated"]
    assert registry.info_for_name("v1", 1, None).cls is OrderLineAdded
    with pytest.raises(ConfigurationError, match="cycle"):
        registry.alias("v3", "v1")
