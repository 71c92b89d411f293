"""The in-process event bus: recorded events to subscribers, after commit."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from eventfold._logs import fields
from eventfold.events import RecordedEvent

__all__ = ["EventBus", "Subscriber"]

logger = logging.getLogger("eventfold.bus")

Subscriber = Callable[[RecordedEvent], None]


class EventBus:
    """Publishes recorded events to in-process subscribers, after they commit.

    Give it to a command handler (``CommandHandler(..., bus=bus)``): once an
    append has committed, the events it wrote are published; a command that
    is rejected or fails publishes nothing. A failing subscriber is logged
    and does not affect the command or the other subscribers. For delivery
    that survives crashes, use a projection instead.
    """

    def __init__(self) -> None:
        self._subscribers: list[tuple[frozenset[str] | None, Subscriber]] = []
        self._lock = threading.Lock()

    def subscribe(self, subscriber: Subscriber, *, types: Sequence[str] | None = None) -> None:
        """Call ``subscriber(event)`` for each published event (of ``types``)."""
        with self._lock:
            self._subscribers.append((frozenset(types) if types is not None else None, subscriber))

    def publish(self, events: Sequence[RecordedEvent]) -> None:
        """Deliver ``events`` to the subscribers, in order."""
        with self._lock:
            subscribers = list(self._subscribers)
        for event in events:
            for types, subscriber in subscribers:
                if types is not None and event.type not in types:
                    continue
                try:
                    subscriber(event)
                except Exception:
                    logger.exception(
                        "event bus subscriber %r failed on %s (%r v%d, position %d)",
                        subscriber,
                        event.id,
                        event.stream,
                        event.version,
                        event.position,
                        extra=fields(event=event),
                    )
