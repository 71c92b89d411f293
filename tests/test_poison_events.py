"""Events a projection cannot decode meet its error policy, one event at a time.

A release changed a field's type and forgot the upcaster: the stored events
no longer decode. A runner must handle the good events around such an event,
then retry it, skip it to the dead letters (with its raw bytes) or stop with
its status saying why, exactly as for a handler's own exception.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from eventfold import MemoryEventStore, RecordedEvent, SerializationError
from eventfold.processes import Dispatch, ProcessManager
from eventfold.projections import (
    ErrorPolicy,
    Projection,
    ProjectionContext,
    ProjectionRunner,
    ProjectionStopped,
)
from eventfold.serialization import Serializer, TypeRegistry
from eventfold.store import EventStore, ProcessCheckpoints
from eventfold.testing._events import Deposited, Received

KINDS = ["sql", "in_memory", "external"]


class ChangedReceived(msgspec.Struct, frozen=True):
    """``Received`` as a later release declares it: the field's type changed."""

    quantity: str


def broken_serializer() -> Serializer:
    """A registry in which the stored Received events no longer decode."""
    registry = TypeRegistry()
    registry.register(Deposited, name="eventfold.testing.Deposited")
    registry.register(ChangedReceived, name="eventfold.testing.Received")
    return Serializer(registry)


def fixed_serializer() -> Serializer:
    """The same release with the mistake undone (the class reads the stored data)."""
    registry = TypeRegistry()
    registry.register(Deposited, name="eventfold.testing.Deposited")
    registry.register(Received, name="eventfold.testing.Received")
    return Serializer(registry)


@pytest.fixture
def store(any_store: EventStore) -> Iterator[EventStore]:
    """good 1, good 2, poison, good 3; read back with the broken release."""
    any_store.append("stock-1", [Deposited(amount=1), Deposited(amount=2)])
    any_store.append("stock-2", [Received(quantity=7)])
    any_store.append("stock-1", [Deposited(amount=3)])
    any_store.serializer = broken_serializer()
    yield any_store


class Seen:
    """What a projection of each kind handled: a SQL table, or a list in memory."""

    def __init__(self, store: EventStore, kind: str) -> None:
        self.store = store
        self.kind = kind
        self.table = f"seen_{uuid.uuid4().hex[:10]}"
        self.events: list[int] = []
        self.sql = kind == "sql" and not isinstance(store, MemoryEventStore)

    def projection(self, policy: ErrorPolicy) -> Projection:
        return Projection(
            f"poison-{self.table}",
            self.handle,
            setup=self.setup,
            in_memory=self.kind == "in_memory",
            external=self.kind == "external",
            on_error=policy,
            batch_size=10,
        )

    def setup(self, ctx: ProjectionContext) -> None:
        if self.sql:
            ctx.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} "
                "(position TEXT PRIMARY KEY, amount BIGINT NOT NULL)"
            )

    def handle(self, ctx: ProjectionContext, event: RecordedEvent) -> None:
        amount = event.data.amount if isinstance(event.data, Deposited) else 100
        if self.sql:
            # Positions as fixed-width text: ordered alike on SQLite and PostgreSQL.
            place = f"{event.position:040d}"
            ctx.execute(
                f"INSERT INTO {self.table} (position, amount) VALUES (?, ?)", (place, amount)
            )
        else:
            self.events.append(amount)

    def amounts(self) -> list[int]:
        if not self.sql:
            return self.events
        runner_store: Any = self.store
        query = f"SELECT amount FROM {self.table} ORDER BY position"
        if hasattr(runner_store, "path"):
            with sqlite3.connect(runner_store.path) as conn:
                rows = conn.execute(query).fetchall()
        else:
            with runner_store.pool.connection() as conn:
                rows = conn.execute(query).fetchall()
        return [row[0] for row in rows]


def positions(store: EventStore) -> list[int]:
    return [e.position for e in fixed_read_all(store)]


def fixed_read_all(store: EventStore) -> list[RecordedEvent]:
    broken = store.serializer
    store.serializer = fixed_serializer()
    try:
        return list(store.read_all())
    finally:
        store.serializer = broken


@pytest.mark.parametrize("kind", KINDS)
def test_stop_handles_the_events_before_it_and_says_why(store: EventStore, kind: str) -> None:
    seen = Seen(store, kind)
    runner = ProjectionRunner(store, seen.projection(ErrorPolicy()))
    good1, good2, poison, _ = positions(store)
    with pytest.raises(ProjectionStopped) as info:
        runner.run_once()
    assert isinstance(info.value.error, SerializationError)
    assert info.value.event.position == poison
    assert seen.amounts() == [1, 2]
    assert runner.position == good2
    status = runner.status()
    assert status.last_error is not None
    assert f"position {poison}" in status.last_error and "quantity" in status.last_error
    assert status.position == good2 and status.lag_events == 2
    assert runner.dead_letters() == []
    # Stopped means stopped: a second run meets the same event, handles nothing past it.
    with pytest.raises(ProjectionStopped):
        runner.run_once()
    assert seen.amounts() == [1, 2]
    # The next release restores the class: the run goes on from the poison event.
    store.serializer = fixed_serializer()
    assert runner.run_once() == 2
    assert seen.amounts() == [1, 2, 100, 3]
    assert runner.status().last_error is None
    assert runner.position > good1


@pytest.mark.parametrize("kind", KINDS)
def test_skip_sends_it_to_the_dead_letters_with_its_raw_bytes(store: EventStore, kind: str) -> None:
    seen = Seen(store, kind)
    runner = ProjectionRunner(
        store, seen.projection(ErrorPolicy(retries=2, backoff=0, then="skip"))
    )
    _, _, poison, good3 = positions(store)
    assert runner.run_once() == 4
    assert seen.amounts() == [1, 2, 3]
    (letter,) = runner.dead_letters()
    assert (letter.position, letter.stream, letter.version) == (poison, "stock-2", 1)
    assert letter.type == "eventfold.testing.Received"
    assert "SerializationError" in letter.error and "quantity" in letter.error
    assert letter.data == b'{"quantity":7}'
    assert letter.schema_version == 1
    assert letter.metadata is None
    assert runner.position == good3
    assert runner.status().dead_letters == 1


@pytest.mark.parametrize("kind", KINDS)
def test_retry_decodes_again_and_succeeds_once_the_type_reads(store: EventStore, kind: str) -> None:
    seen = Seen(store, kind)
    attempts: list[int] = []
    broken = store.serializer
    original = broken.decode

    def decode_fixed_on_third_attempt(name: str, *args: Any) -> Any:
        if name == "eventfold.testing.Received":
            attempts.append(1)
            if len(attempts) >= 3:
                return Received(quantity=7)
        return original(name, *args)

    broken.decode = decode_fixed_on_third_attempt  # type: ignore[method-assign]
    runner = ProjectionRunner(store, seen.projection(ErrorPolicy(retries=5, backoff=0)))
    assert runner.run_once() == 4
    assert sorted(seen.amounts()) == [1, 2, 3, 100]
    assert runner.dead_letters() == []
    assert len(attempts) >= 3


def test_a_process_manager_skips_what_it_cannot_decode(any_store: EventStore) -> None:
    sent: list[tuple[str, object]] = []

    class Recorder:
        def handle(self, stream: str, command: object, **_: Any) -> None:
            sent.append((stream, command))

    def react(event: RecordedEvent) -> list[Dispatch]:
        return [Dispatch(Recorder(), "audit", event.data)]  # type: ignore[arg-type]

    any_store.append("stock-1", [Deposited(amount=1)])
    any_store.append("stock-2", [Received(quantity=7)])
    any_store.append("stock-1", [Deposited(amount=2)])
    any_store.serializer = broken_serializer()
    manager = ProcessManager(f"pm-{uuid.uuid4().hex[:8]}", react, on_error=ErrorPolicy(then="skip"))
    runner = ProjectionRunner(any_store, manager.projection)
    runner.run_once()
    assert sent == [("audit", Deposited(amount=1)), ("audit", Deposited(amount=2))]
    assert [d.stream for d in runner.dead_letters()] == ["stock-2"]


class ForeignStore:
    """A store outside eventfold's class tree: only its public read API is used."""

    def __init__(self, inner: EventStore) -> None:
        self.inner = inner

    def read_all(self, **kwargs: Any) -> Iterator[RecordedEvent]:
        return self.inner.read_all(**kwargs)


def test_a_foreign_stores_undecodable_event_becomes_one_item_of_the_page(
    store: EventStore,
) -> None:
    foreign: Any = ForeignStore(store)
    (page,) = ProcessCheckpoints(foreign).pages(0, None, None, 10)
    assert [type(e.data).__name__ for e in page] == [
        "Deposited",
        "Deposited",
        "Undecodable",
        "Deposited",
    ]
    assert [e.position for e in page] == positions(store)
    assert page[2].stream == "stock-2" and page[2].version == 1
