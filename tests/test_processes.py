"""Process managers: idempotent reactions on redelivery; the event bus: after commit only."""

from __future__ import annotations

from typing import Any

import pytest

from eventfold import CommandHandler, MemoryEventStore, RecordedEvent
from eventfold.bus import EventBus
from eventfold.processes import Dispatch, ProcessManager
from eventfold.projections import SKIP, ProjectionRunner, ProjectionStopped
from eventfold.store import EventStore
from tests.test_commands import Credit, Credited, Debit, Debited, Overdrawn, ledger


@pytest.fixture
def store(any_store: EventStore) -> EventStore:
    return any_store


def mirror(handler: CommandHandler[Any, Any]) -> ProcessManager:
    """Every credit to a "src-*" stream is mirrored as a credit to "dst-*"."""

    def react(event: RecordedEvent) -> list[Dispatch]:
        if not event.stream.startswith("src-"):
            return []
        target = "dst-" + event.stream.removeprefix("src-")
        return [Dispatch(handler, target, Credit(event.data.amount))]

    return ProcessManager("mirror", react, types=["tests.Credited"])


def test_reactions_are_sent_once_even_when_events_are_redelivered(store: EventStore) -> None:
    handler = CommandHandler(store, ledger)
    for amount in (5, 7):
        handler.handle("src-a", Credit(amount))
    runner = ProjectionRunner(store, mirror(handler).projection, owner="pm-1")
    assert runner.run_once() == 4  # the two credits, then the two mirrored ones (no reaction)
    assert [e.data for e in store.read("dst-a")] == [Credited(amount=5), Credited(amount=7)]
    # A crash before the checkpoint advanced means redelivery: simulate it.
    runner.reset(replay_effects=True)  # back to position 0: every event is delivered again
    assert ProjectionRunner(store, mirror(handler).projection, owner="pm-1").run_once() == 4
    assert [e.data for e in store.read("dst-a")] == [Credited(amount=5), Credited(amount=7)]
    first = next(iter(store.read("src-a")))
    mirrored = next(iter(store.read("dst-a")))
    assert mirrored.metadata["causation_id"] == str(first.id)


def test_rejected_commands_get_compensations(store: EventStore) -> None:
    handler = CommandHandler(store, ledger)

    def react(event: RecordedEvent) -> list[Dispatch]:
        # A "transfer" request: debit the source by the amount credited to "req-*".
        return [Dispatch(handler, "account", Debit(event.data.amount))]

    def on_rejected(event: RecordedEvent, dispatch: Dispatch, error: Exception) -> list[Dispatch]:
        assert isinstance(error, Overdrawn)
        return [Dispatch(handler, "refused", Credit(event.data.amount))]

    handler.handle("account", Credit(10))
    handler.handle("req-1", Credit(4))
    handler.handle("req-2", Credit(40))  # more than the account holds
    manager = ProcessManager("debits", react, stream_prefix="req-", on_rejected=on_rejected)
    ProjectionRunner(store, manager.projection).run_once()
    assert [e.data for e in store.read("account")] == [Credited(amount=10), Debited(amount=4)]
    assert [e.data for e in store.read("refused")] == [Credited(amount=40)]


def test_a_rejection_without_compensation_meets_the_error_policy(store: EventStore) -> None:
    handler = CommandHandler(store, ledger)
    handler.handle("req-1", Credit(40))

    def react(event: RecordedEvent) -> list[Dispatch]:
        return [Dispatch(handler, "empty", Debit(event.data.amount))]

    stopping = ProcessManager("stop", react, stream_prefix="req-")
    with pytest.raises(ProjectionStopped):
        ProjectionRunner(store, stopping.projection).run_once()
    skipping = ProcessManager("skip", react, stream_prefix="req-", on_error=SKIP)
    runner = ProjectionRunner(store, skipping.projection)
    runner.run_once()
    assert [d.error.split(":")[0] for d in runner.dead_letters()] == ["Overdrawn"]


def test_event_bus_publishes_after_commit_only() -> None:
    store = MemoryEventStore()
    bus = EventBus()
    seen: list[RecordedEvent] = []
    positions_at_delivery: list[int] = []

    def subscriber(event: RecordedEvent) -> None:
        seen.append(event)
        positions_at_delivery.append(store.last_position())

    bus.subscribe(subscriber)
    credits: list[RecordedEvent] = []
    bus.subscribe(credits.append, types=["tests.Credited"])
    bus.subscribe(lambda event: 1 / 0)  # a failing subscriber harms nobody
    handler = CommandHandler(store, ledger, bus=bus)
    handler.handle("w", Credit(10))
    handler.handle("w", Debit(3))
    with pytest.raises(Overdrawn):
        handler.handle("w", Debit(100))  # rejected: nothing published
    assert [type(e.data) for e in seen] == [Credited, Debited]
    assert [e.version for e in seen] == [1, 2]
    # Each event was already in the store when its subscribers ran.
    assert [p >= e.position for p, e in zip(positions_at_delivery, seen, strict=True)] == [
        True,
        True,
    ]
    assert [e.data for e in credits] == [Credited(amount=10)]


def test_only_listed_rejections_are_compensated(
    store: EventStore,
) -> None:
    handler = CommandHandler(store, ledger)
    handler.handle("req-1", Credit(40))

    def react(event: RecordedEvent) -> list[Dispatch]:
        return [
            Dispatch(handler, "empty", Debit(event.data.amount)),  # rejected: Overdrawn
            Dispatch(handler, "after", Credit(1)),  # later commands are still sent
        ]

    def refund(event: RecordedEvent, dispatch: Dispatch, error: Exception) -> list[Dispatch]:
        return [Dispatch(handler, "refunds", Credit(event.data.amount))]

    manager = ProcessManager(
        "listed", react, stream_prefix="req-", on_rejected=refund, rejections=(Overdrawn,)
    )
    ProjectionRunner(store, manager.projection).run_once()
    assert [e.data for e in store.read("refunds")] == [Credited(amount=40)]
    assert [e.data for e in store.read("after")] == [Credited(amount=1)]

    def crash(event: RecordedEvent) -> list[Dispatch]:
        raise_later = Dispatch(handler, "empty", Debit(event.data.amount))
        return [raise_later]

    unlisted = ProcessManager(
        "unlisted", crash, stream_prefix="req-", on_rejected=refund, rejections=(KeyError,)
    )
    with pytest.raises(ProjectionStopped):
        ProjectionRunner(store, unlisted.projection).run_once()
    assert len(list(store.read("refunds"))) == 1
