"""The SQLite store's connections: who holds what, and whether a file is eventfold's.

Two pieces used by :mod:`eventfold.store.sqlite._db`:

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

from eventfold.errors import ConfigurationError

__all__ = ["APPLICATION_ID", "SQLITE_HEADER", "FileFacts", "OwnedLock", "inspect_file"]

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
