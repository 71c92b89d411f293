"""Where projections keep checkpoints, leases and dead letters, per store.

The runner in :mod:`eventfold.projections` talks to one of these adapters;
each keeps its bookkeeping in the event store's own database, so that a read
model written through :meth:`transaction`'s connection commits together with
the checkpoint that says how far it got.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Protocol

import msgspec

from eventfold.errors import ConfigurationError
from eventfold.events import RecordedEvent
from eventfold.store import EventStore
from eventfold.store._rows import DATA, METADATA, SCHEMA_VERSION
from eventfold.store._rules import now_us, us_to_datetime
from eventfold.store.memory._store import MemoryEventStore
from eventfold.store.sqlite._db import SQL
from eventfold.store.sqlite._store import SqliteEventStore

__all__ = ["Checkpoint", "DeadLetter", "ProjectionBackend", "backend_for", "wait_in_slices"]

#: How soon (seconds) a waiting runner notices that it was asked to stop.
STOP_CHECK = 0.1


def wait_in_slices(stop: threading.Event, timeout: float, step: Callable[[float], bool]) -> None:
    """Call ``step(seconds)`` until it returns True, ``stop`` is set or ``timeout`` passes.

    Each call waits at most STOP_CHECK seconds, so a runner asked to stop
    leaves its wait soon.
    """
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0 or step(min(remaining, STOP_CHECK)):
            return


class Checkpoint(msgspec.Struct, frozen=True):
    """How far a subscription got, and who holds its lease until when (µs)."""

    position: int
    owner: str | None
    lease_expires_us: int


class DeadLetter(msgspec.Struct, frozen=True):
    """An event a projection could not handle (or decode) and skipped, with the error.

    ``schema_version``, ``data`` and ``metadata`` are the event as stored
    (raw JSON bytes), None once the event itself was erased: what an
    operator needs to see when the event could not even be decoded.
    """

    position: int
    event_id: bytes
    stream: str
    version: int
    type: str
    error: str
    recorded_at: datetime
    schema_version: int | None = None
    data: bytes | None = None
    metadata: bytes | None = None


class ProjectionBackend(Protocol):
    """What the projection runner needs from a store."""

    #: Whether transaction() rolls back what the handler wrote when it fails.
    transactional: bool

    def transaction(self) -> Any:
        """A context manager yielding the driver connection inside a transaction."""
        ...

    def get(self, name: str) -> Checkpoint | None:
        """The checkpoint of ``name``."""
        ...

    def names(self) -> list[str]:
        """The names of every stored checkpoint."""
        ...

    def acquire(self, name: str, owner: str, ttl: float) -> bool:
        """Take or renew the lease of ``name``; False while another live owner has it."""
        ...

    def release(self, name: str, owner: str) -> None:
        """Give the lease up (a stopping runner)."""
        ...

    def owns(self, name: str, owner: str) -> bool:
        """Whether ``owner`` holds the lease of ``name`` now."""
        ...

    def advance(self, conn: Any, name: str, position: int, owner: str, ttl: float) -> bool:
        """Move the checkpoint in the open transaction; False if the lease was lost."""
        ...

    def dead_letter(self, conn: Any, name: str, event: RecordedEvent, error: str) -> None:
        """Record a skipped event in the open transaction."""
        ...

    def dead_letters(self, name: str) -> list[DeadLetter]:
        """The events ``name`` skipped, oldest first."""
        ...

    def reset(self, conn: Any, name: str, owner: str) -> bool:
        """In the open transaction: checkpoint back to 0, dead letters cleared.

        Fenced: False (and nothing done) unless ``owner`` holds the lease.
        """
        ...

    def backlog(self, after: int) -> tuple[int, datetime | None]:
        """Events after ``after`` and the recording time of the oldest of them."""
        ...

    def wait(self, after: int, timeout: float, stop: threading.Event) -> None:
        """Return when events after ``after`` may exist, ``stop`` is set, or after ``timeout``."""
        ...

    def close(self) -> None:
        """Release what waiting needed (a LISTEN connection)."""
        ...

    def set_alias(self, alias: str, target: str) -> None:
        """Point ``alias`` at the projection ``target`` (one atomic write)."""
        ...

    def get_alias(self, alias: str) -> str | None:
        """The projection ``alias`` points at."""
        ...


def backend_for(store: EventStore) -> ProjectionBackend:
    """The adapter for ``store``."""
    if isinstance(store, SqliteEventStore):
        return SqliteProjectionBackend(store)
    if isinstance(store, MemoryEventStore):
        # One per store, so that runners in this process share checkpoints and leases.
        backend = _memory_backends.get(store)
        if backend is None:
            backend = _memory_backends[store] = MemoryProjectionBackend(store)
        return backend
    # Imported here: the PostgreSQL adapter needs psycopg, an optional extra.
    from eventfold.store.postgres._checkpoints import (  # noqa: PLC0415
        PostgresEventStore,
        PostgresProjectionBackend,
    )

    if isinstance(store, PostgresEventStore):
        return PostgresProjectionBackend(store)
    raise ConfigurationError(f"projections do not support {type(store).__name__}")


_memory_backends: weakref.WeakKeyDictionary[MemoryEventStore, MemoryProjectionBackend] = (
    weakref.WeakKeyDictionary()
)


class SqliteProjectionBackend:
    """Checkpoints in the SQLite file, next to the events (schema version 3)."""

    transactional = True

    def __init__(self, store: SqliteEventStore) -> None:
        self._db = store._db

    def transaction(self) -> Any:
        return self._db.write_transaction()

    def get(self, name: str) -> Checkpoint | None:
        with self._db.reading() as conn:
            row = conn.execute(SQL["checkpoint_get"], (name,)).fetchone()
        return None if row is None else Checkpoint(row[0], row[1], row[2])

    def names(self) -> list[str]:
        with self._db.reading() as conn:
            rows = conn.execute(SQL["checkpoint_list"]).fetchall()
        return [row[0] for row in rows]

    def acquire(self, name: str, owner: str, ttl: float) -> bool:
        now = now_us()
        with self._db.write_transaction() as conn:
            conn.execute(SQL["checkpoint_acquire"], (name, owner, now, now + int(ttl * 1e6)))
            row = conn.execute(SQL["checkpoint_get"], (name,)).fetchone()
        return row is not None and row[1] == owner

    def release(self, name: str, owner: str) -> None:
        with self._db.write_transaction() as conn:
            conn.execute(SQL["checkpoint_release"], (name, owner))

    def owns(self, name: str, owner: str) -> bool:
        checkpoint = self.get(name)
        return checkpoint is not None and checkpoint.owner == owner

    def advance(self, conn: Any, name: str, position: int, owner: str, ttl: float) -> bool:
        now = now_us()
        cursor = conn.execute(
            SQL["checkpoint_advance"], (name, position, owner, now, now + int(ttl * 1e6))
        )
        return bool(cursor.rowcount)

    def dead_letter(self, conn: Any, name: str, event: RecordedEvent, error: str) -> None:
        conn.execute(
            SQL["dead_letter_add"],
            (
                name,
                event.position,
                event.id.bytes,
                event.stream,
                event.version,
                event.type,
                error,
                now_us(),
            ),
        )

    def dead_letters(self, name: str) -> list[DeadLetter]:
        with self._db.reading() as conn:
            rows = conn.execute(SQL["dead_letter_list"], (name,)).fetchall()
        return [
            DeadLetter(
                position,
                event_id,
                stream,
                version,
                type_,
                error,
                us_to_datetime(at),
                schema_version,
                data,
                metadata,
            )
            for (
                position,
                event_id,
                stream,
                version,
                type_,
                error,
                at,
                schema_version,
                data,
                metadata,
            ) in rows
        ]

    def reset(self, conn: Any, name: str, owner: str) -> bool:
        if not conn.execute(SQL["checkpoint_reset"], (name, owner, now_us())).rowcount:
            return False
        conn.execute(SQL["dead_letter_clear"], (name,))
        return True

    def backlog(self, after: int) -> tuple[int, datetime | None]:
        with self._db.reading() as conn:
            count, oldest = conn.execute(SQL["count_after"], (after,)).fetchone()
        return count, (us_to_datetime(oldest) if oldest is not None else None)

    def wait(self, after: int, timeout: float, stop: threading.Event) -> None:
        # Another connection's commit changes PRAGMA data_version (of this
        # thread's connection, which reading() gives each time); polling it is
        # one cheap statement, done at a modest pace rather than spinning.
        # Each poll is one translated use of the connection: errors become
        # StoreError, and close() is never kept waiting between polls.
        start = self._data_version()
        deadline = time.monotonic() + timeout
        pause = 0.001
        while time.monotonic() < deadline and not stop.is_set():
            if self._data_version() != start or self._db_has_after(after):
                return
            time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            pause = min(pause * 2, 0.05)

    def _data_version(self) -> int:
        with self._db.reading() as conn:
            (version,) = conn.execute(SQL["data_version"]).fetchone()
        return int(version)

    def close(self) -> None:
        return None

    def set_alias(self, alias: str, target: str) -> None:
        with self._db.write_transaction() as conn:
            conn.execute(SQL["alias_set"], (alias, target))

    def get_alias(self, alias: str) -> str | None:
        with self._db.reading() as conn:
            row = conn.execute(SQL["alias_get"], (alias,)).fetchone()
        return None if row is None else str(row[0])

    def _db_has_after(self, after: int) -> bool:
        # Commits through this very connection do not change data_version.
        with self._db.reading() as conn:
            (last,) = conn.execute(SQL["last_position"]).fetchone()
        return bool(last > after)


class MemoryProjectionBackend:
    """Checkpoints in process memory, beside a MemoryEventStore.

    Its "transactions" cannot roll back a handler's effects, so the runner
    handles and checkpoints one event at a time with it.
    """

    transactional = False

    def __init__(self, store: MemoryEventStore) -> None:
        self._store = store
        self._lock = threading.RLock()
        self._checkpoints: dict[str, Checkpoint] = {}
        self._dead: dict[str, list[DeadLetter]] = {}
        self._aliases: dict[str, str] = {}

    @contextmanager
    def transaction(self) -> Iterator[None]:
        # Nothing to roll back, and no lock held while a handler runs: status()
        # and other runners must not wait for a busy (or hung) handler. Each
        # bookkeeping step below takes the lock itself; advance() is fenced.
        yield None

    def get(self, name: str) -> Checkpoint | None:
        with self._lock:
            return self._checkpoints.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._checkpoints)

    def acquire(self, name: str, owner: str, ttl: float) -> bool:
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

    def owns(self, name: str, owner: str) -> bool:
        """Whether ``owner`` holds the lease (checked before effects that cannot roll back)."""
        with self._lock:
            current = self._checkpoints.get(name)
            return current is not None and current.owner == owner

    def release(self, name: str, owner: str) -> None:
        with self._lock:
            current = self._checkpoints.get(name)
            if current is not None and current.owner == owner:
                self._checkpoints[name] = Checkpoint(current.position, None, 0)

    def advance(self, conn: Any, name: str, position: int, owner: str, ttl: float) -> bool:
        with self._lock:
            current = self._checkpoints.get(name)
            if current is None or current.owner != owner:
                return False
            self._checkpoints[name] = Checkpoint(position, owner, now_us() + int(ttl * 1e6))
            return True

    def dead_letter(self, conn: Any, name: str, event: RecordedEvent, error: str) -> None:
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

    def dead_letters(self, name: str) -> list[DeadLetter]:
        with self._lock:
            letters = list(self._dead.get(name, []))
        # The stored event beside each (None once erased), as the SQL stores join it.
        return [msgspec.structs.replace(d, **self._stored(d.position)) for d in letters]

    def _stored(self, position: int) -> dict[str, Any]:
        row = self._store._row_at(position)
        if row is None:
            return {}
        return {
            "schema_version": row[SCHEMA_VERSION],
            "data": row[DATA],
            "metadata": row[METADATA],
        }

    def reset(self, conn: Any, name: str, owner: str) -> bool:
        with self._lock:
            current = self._checkpoints.get(name)
            if current is None or current.owner != owner:
                return False
            self._checkpoints[name] = Checkpoint(0, owner, current.lease_expires_us)
            self._dead.pop(name, None)
            return True

    def backlog(self, after: int) -> tuple[int, datetime | None]:
        # Counted from the stored rows: an event that cannot be decoded counts too.
        count, oldest = self._store._backlog(after)
        return count, (us_to_datetime(oldest) if oldest is not None else None)

    def wait(self, after: int, timeout: float, stop: threading.Event) -> None:
        wait_in_slices(stop, timeout, lambda seconds: self._store._wait_for_append(after, seconds))

    def close(self) -> None:
        return None

    def set_alias(self, alias: str, target: str) -> None:
        with self._lock:
            self._aliases[alias] = target

    def get_alias(self, alias: str) -> str | None:
        with self._lock:
            return self._aliases.get(alias)
