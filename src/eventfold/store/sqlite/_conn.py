"""The SQLite store's connections: who holds what, and whether a file is eventfold's.

The pieces :mod:`eventfold.store.sqlite._db` builds on:

* :class:`Handle` is one sqlite3 connection and the lock held by each use
  of it, so that ``close()`` from another thread never closes a connection
  under a running statement.
* :class:`OwnedLock` knows which thread holds it and since when, and is
  acquired with a timeout: the write lock, so that a writer that waited too
  long can say whom it waited for, and a status can show a long holder.
* :func:`inspect_file` reads what a file is before eventfold trusts or
  migrates it: eventfold marks its files with ``PRAGMA application_id``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from eventfold.errors import ConfigurationError, StoreTimeout
from eventfold.store.sqlite._errors import Translate, closed_error

__all__ = [
    "APPLICATION_ID",
    "SQLITE_HEADER",
    "FileFacts",
    "Handle",
    "HandleOwner",
    "OwnedLock",
    "inspect_file",
    "is_busy",
]

#: ``PRAGMA application_id`` of every eventfold SQLite file: "EvFd" in ASCII.
APPLICATION_ID = 0x45764664
#: The first 16 bytes of every SQLite database file.
SQLITE_HEADER = b"SQLite format 3\x00"
_SHOWN_NAMES = 5


class OwnedLock:
    """A lock that records its holder (thread, since when); waits are bounded."""

    __slots__ = ("_held", "_lock", "_owner")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._held: tuple[threading.Thread, float] | None = None

    def held_by_me(self) -> bool:
        """Whether the calling thread holds the lock."""
        return self._owner == threading.get_ident()

    def acquire(self, timeout: float) -> bool:
        """Take the lock within ``timeout`` seconds (0: only if free); False if not."""
        lock = self._lock
        if not (lock.acquire(False) or (timeout > 0 and lock.acquire(True, timeout))):
            return False
        self._owner = threading.get_ident()
        self._held = (threading.current_thread(), time.monotonic())
        return True

    def release(self) -> None:
        """Give the lock back."""
        self._owner = None
        self._held = None
        self._lock.release()

    def holder(self) -> tuple[str, float] | None:
        """(thread name, ``time.monotonic()`` when it took the lock), or None if free."""
        held = self._held
        return None if held is None else (held[0].name, held[1])

    def holder_text(self) -> str:
        """Who holds the lock and for how long, for messages."""
        held = self.holder()
        if held is None:
            return "no thread holds it any more"
        return f"thread {held[0]!r} has held it for {time.monotonic() - held[1]:.1f} s"


@dataclass(frozen=True)
class FileFacts:
    """What a database file says about itself, read before trusting it."""

    application_id: int
    user_version: int
    objects: list[tuple[str, str]]  # (type, name) of schema objects, SQLite's own left out

    @property
    def tables(self) -> list[str]:
        """Names of the tables."""
        return [name for kind, name in self.objects if kind == "table"]

    @property
    def is_new(self) -> bool:
        """An empty database (a new file): eventfold may initialise it."""
        return self.application_id == 0 and self.user_version == 0 and not self.objects

    @property
    def is_unmarked_eventfold(self) -> bool:
        """Made by an eventfold version before the marker: recognised by its tables."""
        return (
            self.application_id == 0
            and self.user_version >= 1
            and "eventfold_events" in self.tables
        )


def read_facts(conn: sqlite3.Connection, objects_sql: str) -> FileFacts:
    """Read the marker, the schema version and the schema objects of ``conn``'s file."""
    (application_id,) = conn.execute("PRAGMA application_id").fetchone()
    (user_version,) = conn.execute("PRAGMA user_version").fetchone()
    objects = [(str(kind), str(name)) for kind, name in conn.execute(objects_sql).fetchall()]
    return FileFacts(int(application_id), int(user_version), objects)


def inspect_file(facts: FileFacts, path: str) -> None:
    """Refuse a database that is not eventfold's (ConfigurationError saying what it is)."""
    if facts.application_id == APPLICATION_ID or facts.is_new or facts.is_unmarked_eventfold:
        return
    tables = facts.tables
    if tables:
        shown = ", ".join(tables[:_SHOWN_NAMES])
        more = f" and {len(tables) - _SHOWN_NAMES} more" if len(tables) > _SHOWN_NAMES else ""
        found = f"{len(tables)} tables of its own ({shown}{more})"
    elif facts.objects:
        found = f"schema objects ({', '.join(name for _, name in facts.objects[:_SHOWN_NAMES])})"
    else:
        found = "no tables"
    raise ConfigurationError(
        f"{path!r} is not an eventfold database: it has {found}, user_version "
        f"{facts.user_version} and application_id {facts.application_id:#010x} "
        f"(eventfold's files have {APPLICATION_ID:#010x}); eventfold does not add its "
        "tables to another application's database: give it a file of its own"
    )


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether SQLite said SQLITE_BUSY: another connection holds the lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_BUSY


class HandleOwner(Protocol):
    """What a :class:`Handle` needs of the database it belongs to."""

    path: str
    busy_timeout: float
    busy_ms: int
    translate: Translate

    @property
    def closed(self) -> bool:
        """Whether the database was closed."""
        ...

    def connection_timeout(self, handle: Handle) -> StoreTimeout:
        """The error of a wait for a connection another thread holds."""
        ...


class Handle:
    """One sqlite3 connection and the lock held by each use of it.

    ``enter()``/``leave()`` (or ``with handle as conn``, which also
    translates errors) bracket every use. ``pins``: threads that took the
    bare connection (:meth:`SqliteDatabase.connection`) and may use it
    without the lock; only they close it.
    """

    __slots__ = (
        "_db",
        "closed",
        "conn",
        "contended_until",
        "data_version",
        "depth",
        "guard",
        "held",
        "lock",
        "pins",
        "released_at",
        "sqlite_busy_ms",
        "thread",
        "write_began",
        "writing",
    )

    def __init__(
        self, db: HandleOwner, conn: sqlite3.Connection, thread: threading.Thread | None
    ) -> None:
        self._db = db
        self.conn = conn
        self.thread = thread  # None: shared by every thread (":memory:")
        self.lock = threading.RLock()
        self.depth = 0  # how deep the holder of `lock` is inside uses
        self.held: tuple[threading.Thread, float] | None = None  # shared: who, since when
        self.guard = threading.Lock()  # orders close() against interrupt()
        self.closed = False
        self.writing = False
        self.pins: set[threading.Thread] = set()
        # SQLite's busy timeout on `conn` now: reads keep busy_timeout (SQLite's
        # handler covers their rare SQLITE_BUSY, e.g. during another process's
        # recovery); BEGIN IMMEDIATE sets 0 and waits in eventfold's own loop.
        self.sqlite_busy_ms = db.busy_ms
        self.write_began = 0.0  # monotonic: when the write lock was taken
        self.released_at = 0.0  # monotonic: when a long write transaction released it
        self.data_version = 0  # PRAGMA data_version when it released it
        self.contended_until = 0.0  # monotonic: other connections wrote lately

    def take(self, timeout: float | None) -> bool:
        """Take the lock within ``timeout`` seconds (0: if free, None: wait)."""
        lock = self.lock
        if not lock.acquire(False):
            if timeout is None:
                lock.acquire()
            elif timeout <= 0 or not lock.acquire(True, timeout):
                return False
        self.depth += 1
        if self.depth == 1 and self.thread is None:
            self.held = (threading.current_thread(), time.monotonic())
        return True

    def holder_text(self) -> str:
        """Who uses the connection now, for messages."""
        held = self.held
        if held is not None:
            return f"thread {held[0].name!r} has used it for {time.monotonic() - held[1]:.1f} s"
        if self.thread is not None:
            return f"thread {self.thread.name!r} is using it"
        return "no thread uses it any more"

    def enter(self, *, reading: bool = True) -> sqlite3.Connection:
        """Begin a use (``reading``: SQLite's busy timeout is busy_timeout)."""
        db = self._db
        # A thread's own connection is contended only by close(), which holds
        # its lock for a moment; the shared one by every thread of the store.
        if not self.take(db.busy_timeout if self.thread is None else None):
            raise db.connection_timeout(self)
        if self.closed or (db.closed and self.depth == 1):
            self.leave()
            raise closed_error(db.path)
        if reading and self.sqlite_busy_ms != db.busy_ms:
            try:
                self.set_sqlite_busy(db.busy_ms)
            except BaseException:
                self.leave()
                raise
        return self.conn

    def set_sqlite_busy(self, ms: int) -> None:
        """Set SQLite's busy timeout of the connection (between uses of it: rarely)."""
        try:
            self.conn.execute(f"PRAGMA busy_timeout={ms}")
        except sqlite3.Error as exc:
            self._db.translate.raise_for(exc)
            raise
        self.sqlite_busy_ms = ms

    def leave(self) -> None:
        """End a use; the last use after close() closes the connection."""
        if self.depth == 1:
            self.held = None
            if self._db.closed:
                self.close_if_safe()
        self.depth -= 1
        self.lock.release()

    def __enter__(self) -> sqlite3.Connection:
        return self.enter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.leave()
        if exc is not None:
            self._db.translate.raise_for(exc)

    def close_if_safe(self) -> None:
        """Close the connection unless a live thread other than this one pinned it."""
        me = threading.current_thread()
        if all(t is me or not t.is_alive() for t in self.pins):
            with self.guard:
                if not self.closed:
                    self.closed = True
                    self.conn.close()

    def interrupt(self) -> None:
        """Make the running statement fail (SQLITE_INTERRUPT) soon; safe from any thread."""
        with self.guard:
            if not self.closed:
                self.conn.interrupt()
