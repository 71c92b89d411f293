"""Projections declared as data: what to handle, how, and what to do on errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from eventfold._checks import check_bool, check_non_negative, check_position, check_seconds
from eventfold.errors import InvalidRequest
from eventfold.events import RecordedEvent
from eventfold.store import AsyncTransaction, Holdup, Transaction

__all__ = [
    "SKIP",
    "STOP",
    "AsyncHandler",
    "ErrorPolicy",
    "Handler",
    "Progress",
    "Projection",
    "ProjectionContext",
    "ProjectionStatus",
]


@dataclass(frozen=True)
class ErrorPolicy:
    """What to do when the handler raises on an event.

    Retry up to ``retries`` times with exponential back-off from ``backoff``
    seconds, then ``then``: ``"stop"`` (the runner raises ProjectionStopped
    and the status shows the error; the event is retried when it runs again)
    or ``"skip"`` (the event and error go to the dead-letter table, the
    projection moves on).
    """

    retries: int = 0
    backoff: float = 0.1
    then: Literal["stop", "skip"] = "stop"

    def __post_init__(self) -> None:
        check_non_negative("ErrorPolicy.retries", self.retries)
        check_seconds("ErrorPolicy.backoff", self.backoff, allow_zero=True)
        if self.then not in ("stop", "skip"):
            raise InvalidRequest(f'ErrorPolicy.then must be "stop" or "skip", not {self.then!r}')


#: Stop at the first failure (the default).
STOP = ErrorPolicy()
#: Record the failing event as a dead letter and go on.
SKIP = ErrorPolicy(then="skip")


class ProjectionContext:
    """What a handler gets besides the event.

    ``transaction`` is the store transaction the handler runs in (a SQL read
    model's batch), ``replaying`` whether the event was handled before a reset
    (by the runner that reset the projection), and ``connection`` its driver connection
    (``sqlite3.Connection`` or ``psycopg.Connection``; ``psycopg.AsyncConnection``
    under an async runner on PostgreSQL); both are None for in-memory and
    external projections and on the memory store. Under an async runner the
    transaction is an :class:`~eventfold.store.AsyncTransaction`: ``await
    ctx.execute(...)``.
    """

    __slots__ = ("projection", "replaying", "transaction")

    def __init__(
        self,
        projection: Projection,
        transaction: Transaction | AsyncTransaction | None,
        *,
        replaying: bool = False,
    ) -> None:
        self.projection = projection
        self.transaction = transaction
        #: True while the event in hand is one this projection handled before a
        #: reset (a rebuild replays it): send no mail, call no HTTP for it.
        self.replaying = replaying

    @property
    def connection(self) -> Any:
        """The driver connection of the open transaction (None without one)."""
        return None if self.transaction is None else self.transaction.connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run ``sql`` with ``?`` placeholders on SQLite or PostgreSQL alike.

        A small helper for read models meant to run on both: the store's
        transaction says its placeholder style (psycopg wants ``%s``, so each
        ``?`` becomes ``%s`` there: write no literal ``?``). Under an async
        runner it returns an awaitable: ``await ctx.execute(...)``.
        """
        # Not through ``connection``: reaching for it can begin the transaction
        # before its first statement would (the async SQLite store's).
        if self.transaction is None:
            raise InvalidRequest(f"projection {self.projection.name!r} has no SQL connection")
        return self.transaction.execute(sql, params)


#: A projection's handler: ``handle(ctx, event)``.
Handler = Callable[[ProjectionContext, RecordedEvent], None]
#: An ``async def handle(ctx, event)``, for :class:`AsyncProjectionRunner`.
AsyncHandler = Callable[[ProjectionContext, RecordedEvent], Awaitable[None]]
#: ``setup(ctx)`` / ``teardown(ctx)``, plain or ``async def`` (async runner only).
Hook = Callable[[ProjectionContext], None] | Callable[[ProjectionContext], Awaitable[None]]


@dataclass(frozen=True)
class Projection:
    """A read model declared as data.

    :param name: unique name; the checkpoint is stored under it.
    :param handle: ``handle(ctx, event)``, called for each event in log order
        (an ``async def`` one is awaited; it needs an :class:`AsyncProjectionRunner`).
    :param types: event type names to receive (None: all).
    :param stream_prefix: only events of streams starting with this.
    :param setup: ``setup(ctx)`` creates the read model (e.g. ``CREATE TABLE IF
        NOT EXISTS``), run in a transaction before the first batch.
    :param teardown: ``teardown(ctx)`` drops it; :meth:`ProjectionRunner.rebuild`
        calls it before replaying from position 0.
    :param in_memory: the read model lives in process memory (see module doc).
    :param external: the handler's effects live outside the store's database
        (commands to other streams, messages, HTTP): each event is handled
        outside any transaction and the checkpoint advances after it, so an
        event may be handled again after a crash; make effects idempotent.
    :param start_from: where the projection starts the first time it runs (no
        checkpoint stored yet): ``"beginning"`` (the whole log), ``"now"``
        (only events appended after that first run began), a position (the
        events after it), or an aware ``datetime`` (the events recorded at or
        after it, in log order). A notifier added to a running system starts
        ``"now"`` and mails nobody about the past. A reset (rebuild) starts
        from the beginning again.
    """

    name: str
    handle: Handler | AsyncHandler
    types: Sequence[str] | None = None
    stream_prefix: str | None = None
    setup: Hook | None = None
    teardown: Hook | None = None
    in_memory: bool = False
    external: bool = False
    on_error: ErrorPolicy = STOP
    batch_size: int = 500
    start_from: str | int | datetime = "beginning"

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise InvalidRequest("a projection needs a non-empty name")
        if not callable(self.handle):
            raise InvalidRequest(f"projection {self.name!r}: handle must be callable")
        check_non_negative("batch_size", self.batch_size, minimum=1)
        check_bool("in_memory", self.in_memory)
        check_bool("external", self.external)
        if not isinstance(self.on_error, ErrorPolicy):
            raise InvalidRequest(f"on_error must be an ErrorPolicy, not {self.on_error!r}")
        if self.stream_prefix is not None and (
            not isinstance(self.stream_prefix, str) or not self.stream_prefix
        ):
            raise InvalidRequest("stream_prefix must be a non-empty str or None")
        if self.in_memory and self.external:
            raise InvalidRequest("a projection is in_memory or external, not both")
        if self.types is not None and (
            isinstance(self.types, str) or not all(isinstance(t, str) for t in self.types)
        ):
            raise InvalidRequest("types must be a sequence of event type names")
        start = self.start_from
        if isinstance(start, datetime):
            if start.tzinfo is None or start.utcoffset() is None:
                raise InvalidRequest("start_from must be an aware datetime (with a timezone)")
        elif isinstance(start, int) and not isinstance(start, bool):
            check_position("start_from", start)
        elif start not in ("beginning", "now"):
            raise InvalidRequest(
                f'start_from must be "beginning", "now", a position or an aware datetime, '
                f"not {start!r}"
            )


@dataclass
class ProjectionStatus:
    """Where a projection stands.

    ``lag_events`` counts events in the log after its position (all types,
    also those readers cannot see yet: ``held_back_by`` then names why);
    ``lag_seconds`` is the age of the oldest of them (0 when caught up).
    ``busy_seconds`` grows while a handler is stuck in a batch (a hung HTTP
    call, a lock wait); a batch taking more than half the lease is also logged.
    """

    name: str
    position: int
    lag_events: int
    lag_seconds: float
    events_per_second: float = 0.0
    last_error: str | None = None
    dead_letters: int = 0
    running: bool = False
    #: Another runner holds the lease: this one waits as a hot standby.
    standby: bool = False
    #: How long the batch being handled now has taken so far (0: none running).
    busy_seconds: float = 0.0
    #: How often ``run_forever`` restarted the runner after it failed.
    restarts: int = 0
    #: While it lags: the transactions that hold readers of the log back
    #: (PostgreSQL; see ``PostgresEventStore.holdups``), oldest first.
    held_back_by: tuple[Holdup, ...] = ()


@dataclass(frozen=True)
class Progress:
    """How far a catch-up got: events handled so far, events left, estimated seconds left."""

    name: str
    done: int
    left: int
    eta_seconds: float
