"""The seam consumers of the log use: checkpoints, leases, dead letters, transactions.

A projection runner (or any consumer that must remember how far it got)
talks to a store only through its public API and two protocols:

* :class:`AsyncTransaction`, from ``store.transaction()``: work that commits
  or rolls back together, in the store's own database. Its ``connection`` is
  the driver connection (a read model's SQL), ``execute`` runs SQL with ``?``
  placeholders on any backend, ``append`` appends events in it.
* :class:`AsyncCheckpoints`, from ``store.checkpoints()``: named checkpoints
  under fenced leases (only the holder of a lease moves its checkpoint, so a
  runner that lost it cannot write behind the new holder), moved forward in
  the same transaction as the read model's writes (or an append: a process
  manager's new events and its position commit together), dead letters,
  aliases for blue/green switches, the log's backlog and the wait for news,
  and the log itself in pages.

Every built-in store implements both; :class:`AsyncProcessCheckpoints` is an
implementation over any store's public API alone (checkpoints kept in the
process, nothing rolled back), which a third-party store may return from its
``checkpoints()`` to run projections at once.
"""

from __future__ import annotations

import asyncio  # unasync: remove
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import msgspec

from eventfold._acompat import FIRST_POLL, AsyncClock, next_poll
from eventfold._checks import check_wait
from eventfold._clock import now_us, us_to_datetime
from eventfold.errors import (
    CheckpointRegression,
    InvalidRequest,
    ProjectionBehind,
    SerializationError,
)
from eventfold.events import RecordedEvent
from eventfold.serialization import EMPTY_METADATA
from eventfold.store._rows import Undecodable
from eventfold.store._types import ANY, AppendResult, Checkpoint, DeadLetter, Expected, Holdup

__all__ = [
    "STOP_CHECK",
    "AsyncCheckpoints",
    "AsyncDirectTransaction",
    "AsyncProcessCheckpoints",
    "AsyncTransaction",
    "async_wait_in_slices",
]

#: How soon (seconds) a waiting consumer notices that it was asked to stop.
STOP_CHECK = 0.1

#: ``stop`` of a wait: an event the consumer sets to leave the wait early.
Stop = asyncio.Event  # unasync: Stop = threading.Event


@runtime_checkable
class AsyncTransaction(Protocol):
    """Work in one transaction of the store's database (see the module docstring)."""

    @property
    def connection(self) -> Any:
        """The driver connection inside the transaction (None for the memory store)."""
        ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run ``sql`` (``?`` placeholders on every backend) in the transaction."""
        ...

    async def append(
        self, stream: str, events: Sequence[object], *, expected: Expected = ANY
    ) -> AppendResult:
        """Append in this transaction: visible, and final, once it commits."""
        ...


@runtime_checkable
class AsyncCheckpoints(Protocol):
    """Checkpoints of named consumers of a store's log (see the module docstring)."""

    #: Whether a transaction rolls back what was written in it when it fails.
    transactional: bool

    def transaction(self) -> AbstractAsyncContextManager[AsyncTransaction]:
        """A transaction of the store (the same as ``store.transaction()``)."""
        ...

    async def get(self, name: str) -> Checkpoint | None:
        """The checkpoint of ``name`` (None: never stored)."""
        ...

    async def names(self) -> list[str]:
        """The names of every stored checkpoint, sorted."""
        ...

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        """Take or renew the lease of ``name`` for ``ttl`` seconds; False while another
        live owner holds it."""
        ...

    async def release(self, name: str, owner: str) -> None:
        """Give the lease up (if ``owner`` holds it)."""
        ...

    async def owns(self, name: str, owner: str) -> bool:
        """Whether ``owner`` holds the lease of ``name`` now."""
        ...

    async def advance(
        self, tx: AsyncTransaction, name: str, position: int, owner: str, ttl: float
    ) -> bool:
        """Move the checkpoint to ``position`` in ``tx`` and renew the lease.

        False (nothing written) if ``owner`` does not hold the lease; raises
        CheckpointRegression for a position at or behind the current one.
        """
        ...

    async def reset(self, tx: AsyncTransaction, name: str, owner: str) -> bool:
        """In ``tx``: the checkpoint back to 0 and its dead letters cleared (fenced)."""
        ...

    async def dead_letter(
        self, tx: AsyncTransaction, name: str, event: RecordedEvent, error: str
    ) -> None:
        """Record in ``tx`` that ``name`` skipped ``event`` because of ``error``."""
        ...

    async def dead_letters(self, name: str) -> list[DeadLetter]:
        """The events ``name`` skipped, oldest first, with the events as stored."""
        ...

    async def backlog(self, after: int) -> tuple[int, datetime | None]:
        """Events of the log after ``after`` and when the oldest of them was recorded.

        Every committed event counts, also those readers cannot see yet
        (held back by a transaction that may still append before them).
        """
        ...

    async def holdups(self) -> list[Holdup]:
        """The transactions that hold readers of the log back now (empty: none)."""
        ...

    async def wait(self, after: int, timeout: float, stop: Stop) -> None:
        """Return when events after ``after`` may exist, ``stop`` is set, or after ``timeout``."""
        ...

    async def wait_for(self, name: str, position: int, timeout: float) -> int:
        """Return the checkpoint of ``name`` (or of the consumer alias ``name`` points
        at) once it is at ``position`` or past it; ProjectionBehind after ``timeout``."""
        ...

    def pages(
        self,
        after: int,
        types: list[str] | None,
        prefix: str | None,
        size: int,
        *,
        read_ahead: bool = False,
    ) -> AsyncIterator[list[RecordedEvent]]:
        """The log after ``after`` to its end, in pages of at most ``size`` events.

        ``types`` are stored type names (already expanded for renames). An
        event that cannot be decoded comes with data ``Undecodable``, for the
        consumer's error policy. ``read_ahead`` lets a backend read the next
        pages while the consumer handles one (holding a connection meanwhile).

        Optional, beside it: ``pages_with_head`` (the same arguments) yields
        each page with the position its read got to (every event up to it was
        read, those the filters skip included; the last item may be an empty
        page). A runner on checkpoints that have it reads no head of the log
        before its pages: the PostgreSQL store's save a round trip per wake.
        Also optional: ``local_positions`` (a ``LocalPositions``), told by this
        process's runners of each committed move while they hold the lease,
        for ``wait_for`` to use before the database.
        """
        ...

    async def set_alias(self, alias: str, target: str) -> None:
        """Point ``alias`` at the consumer ``target`` (one atomic write)."""
        ...

    async def get_alias(self, alias: str) -> str | None:
        """The consumer ``alias`` points at."""
        ...

    async def close(self) -> None:
        """Release what waiting held (a LISTEN connection); the store stays open."""
        ...


#: One slice of a wait: wait up to the seconds given; True when there is news.
Step = Callable[[float], Awaitable[bool]]  # unasync: Step = Callable[[float], bool]


async def async_wait_in_slices(stop: Stop, timeout: float, step: Step) -> None:
    """Await ``step(seconds)`` until it returns True, ``stop`` is set or ``timeout`` passes.

    Each step waits at most STOP_CHECK seconds, so a consumer asked to stop
    leaves its wait soon.
    """
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0 or await step(min(remaining, STOP_CHECK)):
            return


#: One wait for a checkpoint to move: returns when it may have (or after the seconds
#: given), with the position it moved to when the signal says so (else None).
_Moved = int | None
Changed = Callable[[float], Awaitable[_Moved]]  # unasync: Changed = Callable[[float], _Moved]
#: A poll for a checkpoint starts this fine: a live runner passes a new event
#: within a millisecond or two, and a read-your-writes wait is on a request's path.
FIRST_CHECKPOINT_POLL = 0.0002


async def async_wait_for_checkpoint(
    name: str,
    position: int,
    timeout: float,
    reached: Callable[[], Awaitable[int]],  # unasync: reached: Callable[[], int],
    changed: Changed | None = None,
) -> int:
    """Await ``reached()`` (a checkpoint's position) until it is ``position`` or more.

    The arguments are checked already (``check_wait``, before any I/O).

    Between tries it awaits ``changed(seconds)``, the backend's signal that the
    checkpoint may have moved; without one it polls, backing off from
    FIRST_CHECKPOINT_POLL to LAST_POLL seconds. ProjectionBehind after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    pause = FIRST_CHECKPOINT_POLL
    while True:
        current = await reached()
        if current >= position:
            return current
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProjectionBehind(name, position, current, timeout)
        if changed is not None:
            moved = await changed(remaining)
            if moved is not None and moved >= position:
                return moved  # the signal said where to: no look needed
        else:
            await AsyncClock.sleep(min(pause, remaining))
            pause = next_poll(pause)


async def async_poll_checkpoint(
    checkpoints: AsyncCheckpoints, name: str, position: int, timeout: float
) -> int:
    """``wait_for`` by polling ``checkpoints.get`` (of the alias's target, if ``name``
    is an alias): for checkpoints whose backend announces no move."""
    check_wait(name, position, timeout)

    async def reached() -> int:
        # The alias is looked up on every look: it may be switched while one waits.
        target = await checkpoints.get_alias(name) or name
        checkpoint = await checkpoints.get(target)
        return checkpoint.position if checkpoint is not None else 0

    return await async_wait_for_checkpoint(name, position, timeout, reached)


class AsyncDirectTransaction:
    """A "transaction" of a store without one: appends go straight to the store.

    ``connection`` is None and ``execute`` is refused: nothing here can be
    rolled back (the memory store, and stores that give no transactions).
    """

    connection: Any = None

    def __init__(self, store: Any) -> None:
        self._store = store

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise InvalidRequest(
            f"{type(self._store).__name__} has no SQL database: this transaction cannot "
            "run SQL (keep such a read model in memory, or in a SQLite/PostgreSQL store)"
        )

    async def append(
        self, stream: str, events: Sequence[object], *, expected: Expected = ANY
    ) -> AppendResult:
        result: AppendResult = await self._store.append(stream, events, expected=expected)
        return result


class AsyncProcessCheckpoints:
    """Checkpoints kept in this process, over any store's public API.

    Nothing is rolled back (``transactional`` is False: a runner then handles
    and checkpoints one event at a time), and checkpoints live as long as
    this object: give each store one (``checkpoints()`` returning the same
    instance), and runners of one process share it.
    """

    transactional = False

    def __init__(self, store: Any) -> None:
        self._store = store
        # A plain lock is right for both flavours: never held across an await.
        self._lock = threading.Lock()
        self._checkpoints: dict[str, Checkpoint] = {}
        self._dead: dict[str, list[DeadLetter]] = {}
        self._aliases: dict[str, str] = {}

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncTransaction]:
        # No lock is held while a handler runs: status() and other runners must
        # not wait for a busy (or hung) handler; each step below locks itself.
        yield AsyncDirectTransaction(self._store)

    async def get(self, name: str) -> Checkpoint | None:
        with self._lock:
            return self._checkpoints.get(name)

    async def names(self) -> list[str]:
        with self._lock:
            return sorted(self._checkpoints)

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        now = now_us()
        with self._lock:
            current = self._checkpoints.get(name)
            if (
                current is not None
                and current.owner not in (None, owner)
                and current.lease_expires_us >= now
            ):
                return False
            position = current.position if current is not None else 0
            self._checkpoints[name] = Checkpoint(position, owner, now + int(ttl * 1e6))
            return True

    async def release(self, name: str, owner: str) -> None:
        with self._lock:
            current = self._checkpoints.get(name)
            if current is not None and current.owner == owner:
                self._checkpoints[name] = Checkpoint(current.position, None, 0)

    async def owns(self, name: str, owner: str) -> bool:
        with self._lock:
            current = self._checkpoints.get(name)
            return current is not None and current.owner == owner

    async def advance(
        self, tx: AsyncTransaction, name: str, position: int, owner: str, ttl: float
    ) -> bool:
        with self._lock:
            current = self._checkpoints.get(name)
            if current is None or current.owner != owner:
                return False
            if position <= current.position:
                raise CheckpointRegression(name, current.position, position)
            self._checkpoints[name] = Checkpoint(position, owner, now_us() + int(ttl * 1e6))
            return True

    async def reset(self, tx: AsyncTransaction, name: str, owner: str) -> bool:
        with self._lock:
            current = self._checkpoints.get(name)
            if current is None or current.owner != owner:
                return False
            self._checkpoints[name] = Checkpoint(0, owner, current.lease_expires_us)
            self._dead.pop(name, None)
            return True

    async def dead_letter(
        self, tx: AsyncTransaction, name: str, event: RecordedEvent, error: str
    ) -> None:
        letter = DeadLetter(
            event.position,
            event.id.bytes,
            event.stream,
            event.version,
            event.type,
            error,
            us_to_datetime(now_us()),
        )
        with self._lock:
            self._dead.setdefault(name, []).append(letter)

    async def dead_letters(self, name: str) -> list[DeadLetter]:
        with self._lock:
            letters = list(self._dead.get(name, []))
        return [msgspec.structs.replace(letter, **await self._stored(letter)) for letter in letters]

    async def _stored(self, letter: DeadLetter) -> dict[str, Any]:
        """The event as stored beside a dead letter (empty once erased, or unknown)."""
        return {}

    async def holdups(self) -> list[Holdup]:
        return []  # a store's public API cannot say; its reads are not held back

    async def backlog(self, after: int) -> tuple[int, datetime | None]:
        count, oldest = 0, None
        async for page in self.pages(after, None, None, 500):
            if oldest is None:
                oldest = page[0].recorded_at
            count += len(page)
        return count, oldest

    async def wait(self, after: int, timeout: float, stop: Stop) -> None:
        # Polls the newest position, backing off from 1 ms to 50 ms.
        pause = [FIRST_POLL]

        async def step(seconds: float) -> bool:
            if await self._store.last_position() > after:
                return True
            await AsyncClock.sleep(min(pause[0], seconds))
            pause[0] = next_poll(pause[0])
            return False

        await async_wait_in_slices(stop, timeout, step)

    async def wait_for(self, name: str, position: int, timeout: float) -> int:
        return await async_poll_checkpoint(self, name, position, timeout)

    async def pages(
        self,
        after: int,
        types: list[str] | None,
        prefix: str | None,
        size: int,
        *,
        read_ahead: bool = False,
    ) -> AsyncIterator[list[RecordedEvent]]:
        while events := await _read_page_lenient(self._store, after, types, prefix, size):
            yield events
            after = events[-1].position

    async def set_alias(self, alias: str, target: str) -> None:
        with self._lock:
            self._aliases[alias] = target

    async def get_alias(self, alias: str) -> str | None:
        with self._lock:
            return self._aliases.get(alias)

    async def close(self) -> None:
        return None


async def _read_page_lenient(
    store: Any, after: int, types: list[str] | None, prefix: str | None, size: int
) -> list[RecordedEvent]:
    """A page of any store's ``read_all``; an event it cannot decode becomes one whose
    data is Undecodable (when the error says where it is), so that it meets the
    consumer's error policy instead of stopping every read at it."""
    events: list[RecordedEvent] = []
    while len(events) < size:
        try:
            async for event in store.read_all(
                after=after, types=types, stream_prefix=prefix, limit=size - len(events)
            ):
                events.append(event)
                after = event.position
            return events
        except SerializationError as exc:
            if exc.position is None or exc.stream is None or exc.version is None:
                raise
            raw_id = exc.event_id.bytes if exc.event_id is not None else bytes(16)
            type_name = getattr(exc, "type_name", "")
            events.append(
                RecordedEvent(
                    raw_id,
                    exc.stream,
                    exc.version,
                    exc.position,
                    type_name,
                    Undecodable(exc, None),
                    EMPTY_METADATA,
                    0,
                )
            )
            after = exc.position
    return events
