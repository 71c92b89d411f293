"""The store's public value types: expectations, append results, stream info, snapshots."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final, TypeAlias

import msgspec


class StreamState(enum.Enum):
    """Expectations about a stream that are not a version number."""

    ANY = "any"
    NO_STREAM = "no_stream"
    STREAM_EXISTS = "stream_exists"

    def __repr__(self) -> str:
        return self.name

    __str__ = __repr__


#: Append whatever the stream's version is.
ANY: Final = StreamState.ANY


#: Append only if the stream has no events (creating it).
NO_STREAM: Final = StreamState.NO_STREAM


#: Append only if the stream already has events.
STREAM_EXISTS: Final = StreamState.STREAM_EXISTS


#: What ``append(..., expected=...)`` accepts: an expectation or an exact version.
Expected: TypeAlias = StreamState | int


class AppendResult(msgspec.Struct, frozen=True):
    """Where an append landed: the stream's versions and the events' global positions.

    ``from_version``..``to_version`` are the versions of the appended events;
    ``to_version`` is the stream's version afterwards. ``positions`` holds the
    global position of each appended event, in version order, and
    ``position`` the last of them. For an empty batch
    ``from_version == to_version + 1``, ``position`` is 0 and ``positions``
    is empty. A retried batch (its event ids already stored) returns the
    original result.
    """

    stream: str
    from_version: int
    to_version: int
    position: int
    positions: tuple[int, ...]


class StreamAppend(msgspec.Struct, frozen=True):
    """One stream's part of an atomic multi-stream append (``store.append_many``).

    ``events`` go to ``stream`` only if the stream satisfies ``expected``
    (as for ``append``), and only together with the other parts of the call.
    """

    stream: str
    events: Sequence[object]
    expected: Expected = ANY


class Deletion(msgspec.Struct, frozen=True):
    """Who deleted (or truncated) a stream, when and why; ``hard`` if events were erased."""

    at: datetime
    by: str
    reason: str
    hard: bool


class StreamInfo(msgspec.Struct, frozen=True):
    """A stream's current version, user metadata and lifecycle.

    ``first_version`` is the oldest version still stored (greater than 1
    after a truncation, described by ``truncated``); ``deleted`` is set for
    a soft- or hard-deleted stream, whose events are hidden from reads.
    """

    stream: str
    version: int
    metadata: Mapping[str, Any]
    first_version: int = 1
    deleted: Deletion | None = None
    truncated: Deletion | None = None


class Snapshot(msgspec.Struct, frozen=True):
    """A stored snapshot of a stream's state right after ``version``.

    ``state_type`` and ``schema_version`` say how ``data`` was encoded, so a
    reader whose state class changed can ignore it and rebuild from events.
    """

    stream: str
    version: int
    state_type: str
    schema_version: int
    data: bytes
    recorded_at: datetime


class Checkpoint(msgspec.Struct, frozen=True):
    """How far a consumer of the log got, and who holds its lease until when (µs)."""

    position: int
    owner: str | None
    lease_expires_us: int


class DeadLetter(msgspec.Struct, frozen=True):
    """An event a projection could not handle (or decode) and skipped, with the error.

    ``schema_version``, ``data`` and ``metadata`` are the event as stored
    (raw JSON bytes), None once the event itself was erased (or where the
    store cannot give them, as with ProcessCheckpoints): what an operator
    needs to see when the event could not even be decoded.
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


class Holdup(msgspec.Struct, frozen=True):
    """A transaction that holds readers of the global log back (PostgreSQL).

    A transaction that has appended to the store and not ended (it may add
    more events before those committed after it), so readers of ``read_all``,
    subscriptions and projection runners see no event committed after it
    until it ends. ``pid`` is None for a prepared transaction (``gid`` names
    it); ``state`` is pg_stat_activity's (``idle in transaction``,
    ``active``, ...), ``prepared``, or ``ended`` for one that ended while it
    was looked at.
    """

    xid: int
    pid: int | None
    database: str | None
    application_name: str
    state: str
    started_at: datetime | None
    query_started_at: datetime | None
    gid: str | None = None

    def describe(self, now: datetime | None = None) -> str:
        """One line for logs and the CLI: who, since when, doing what."""
        who = f"prepared transaction {self.gid!r}" if self.gid is not None else f"pid {self.pid}"
        parts = [f"transaction {self.xid}", self.state]
        if self.started_at is not None:
            age = ((now or datetime.now(self.started_at.tzinfo)) - self.started_at).total_seconds()
            parts.append(f"open {max(age, 0.0):.1f} s")
        if self.database is not None:
            parts.append(f"database {self.database!r}")
        if self.application_name:
            parts.append(f"application {self.application_name!r}")
        if self.query_started_at is not None:
            parts.append(f"last query at {self.query_started_at.isoformat(timespec='seconds')}")
        return f"{who} ({', '.join(parts)})"
