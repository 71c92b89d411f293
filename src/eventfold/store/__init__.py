"""The event store protocol and the types every backend shares.

A store keeps streams of events. ``append`` is atomic (all events of a batch
or none), checks an expected version, and is idempotent by event id. ``read``
streams one stream's events; ``read_all`` the global log, in which a reader
that tails the log while writers commit sees every event exactly once, in one
order, and never finds a new event behind a position it has passed.

Each backend comes in a sync and an async flavour with the same methods;
:class:`EventStore` and :class:`AsyncEventStore` describe them for type
checkers, so code and third-party backends can depend on the protocol only.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable
from uuid import UUID

from eventfold.events import RecordedEvent
from eventfold.serialization import Serializer
from eventfold.store._types import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    Deletion,
    Expected,
    Snapshot,
    StreamInfo,
    StreamState,
)

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendResult",
    "AsyncEventStore",
    "Deletion",
    "EventStore",
    "Expected",
    "Snapshot",
    "StreamInfo",
    "StreamState",
]


@runtime_checkable
class EventStore(Protocol):
    """What a synchronous event store provides."""

    #: Encodes events on append and decodes them on read.
    serializer: Serializer
    #: How many rows one round trip fetches while iterating a read.
    page_size: int

    def append(
        self, stream: str, events: Sequence[object], *, expected: Expected = ANY
    ) -> AppendResult:
        """Append events atomically; raise WrongExpectedVersion if ``expected`` fails."""
        ...

    def read(
        self,
        stream: str,
        *,
        from_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> Iterator[RecordedEvent]:
        """Yield a stream's events in version order (or reverse), fetched in pages."""
        ...

    def read_all(
        self,
        *,
        after: int = 0,
        types: Sequence[str] | None = None,
        stream_prefix: str | None = None,
        limit: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Iterator[RecordedEvent]:
        """Yield events of the global log with position > ``after``, in log order."""
        ...

    def subscribe(
        self,
        *,
        after: int = 0,
        types: Sequence[str] | None = None,
        stream_prefix: str | None = None,
        poll_interval: float = 5.0,
    ) -> Generator[RecordedEvent, None, None]:
        """Yield events after ``after`` like ``read_all``, then new ones as they commit."""
        ...

    def get_stream(self, stream: str) -> StreamInfo | None:
        """Return a stream's version and metadata, or None if it has no events."""
        ...

    def set_stream_metadata(self, stream: str, metadata: Mapping[str, Any]) -> None:
        """Replace a stream's user metadata."""
        ...

    def last_position(self) -> int:
        """The position of the newest event of the global log (0 when empty)."""
        ...

    def close(self) -> None:
        """Release connections; later calls raise StoreClosed."""
        ...

    def __enter__(self) -> Self:
        """Use the store as a context manager that closes it."""
        ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store."""
        ...

    def find_event(self, event_id: UUID) -> RecordedEvent | None:
        """The event with that id, or None (also when its stream is deleted)."""
        ...

    def delete_stream(
        self, stream: str, *, hard: bool = False, by: str = "", reason: str = ""
    ) -> None:
        """Soft-delete (restorable) or hard-delete (erase) a stream, recording who and why."""
        ...

    def restore_stream(self, stream: str) -> None:
        """Undo a soft delete."""
        ...

    def truncate_stream(
        self, stream: str, before_version: int, *, by: str = "", reason: str = ""
    ) -> int:
        """Erase events older than ``before_version`` (keeping the newest); return the count."""
        ...

    def save_snapshot(
        self, stream: str, version: int, state_type: str, schema_version: int, data: bytes
    ) -> None:
        """Store a snapshot of the state right after ``version``."""
        ...

    def load_snapshot(self, stream: str, *, max_version: int | None = None) -> Snapshot | None:
        """The newest snapshot at or below ``max_version``."""
        ...

    def delete_snapshots(
        self,
        stream: str | None = None,
        *,
        state_type: str | None = None,
        keep_schema_version: int | None = None,
    ) -> int:
        """Delete snapshots; return how many."""
        ...


@runtime_checkable
class AsyncEventStore(Protocol):
    """What an asyncio event store provides (same semantics as EventStore)."""

    #: Encodes events on append and decodes them on read.
    serializer: Serializer
    #: How many rows one round trip fetches while iterating a read.
    page_size: int

    async def append(
        self, stream: str, events: Sequence[object], *, expected: Expected = ANY
    ) -> AppendResult:
        """Append events atomically; raise WrongExpectedVersion if ``expected`` fails."""
        ...

    def read(
        self,
        stream: str,
        *,
        from_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Yield a stream's events in version order (or reverse), fetched in pages."""
        ...

    def read_all(
        self,
        *,
        after: int = 0,
        types: Sequence[str] | None = None,
        stream_prefix: str | None = None,
        limit: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Yield events of the global log with position > ``after``, in log order."""
        ...

    def subscribe(
        self,
        *,
        after: int = 0,
        types: Sequence[str] | None = None,
        stream_prefix: str | None = None,
        poll_interval: float = 5.0,
    ) -> AsyncGenerator[RecordedEvent, None]:
        """Yield events after ``after`` like ``read_all``, then new ones as they commit."""
        ...

    async def get_stream(self, stream: str) -> StreamInfo | None:
        """Return a stream's version and metadata, or None if it has no events."""
        ...

    async def set_stream_metadata(self, stream: str, metadata: Mapping[str, Any]) -> None:
        """Replace a stream's user metadata."""
        ...

    async def last_position(self) -> int:
        """The position of the newest event of the global log (0 when empty)."""
        ...

    async def close(self) -> None:
        """Release connections; later calls raise StoreClosed."""
        ...

    async def __aenter__(self) -> Self:
        """Use the store as an async context manager that closes it."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store."""
        ...

    async def find_event(self, event_id: UUID) -> RecordedEvent | None:
        """The event with that id, or None (also when its stream is deleted)."""
        ...

    async def delete_stream(
        self, stream: str, *, hard: bool = False, by: str = "", reason: str = ""
    ) -> None:
        """Soft-delete (restorable) or hard-delete (erase) a stream, recording who and why."""
        ...

    async def restore_stream(self, stream: str) -> None:
        """Undo a soft delete."""
        ...

    async def truncate_stream(
        self, stream: str, before_version: int, *, by: str = "", reason: str = ""
    ) -> int:
        """Erase events older than ``before_version`` (keeping the newest); return the count."""
        ...

    async def save_snapshot(
        self, stream: str, version: int, state_type: str, schema_version: int, data: bytes
    ) -> None:
        """Store a snapshot of the state right after ``version``."""
        ...

    async def load_snapshot(
        self, stream: str, *, max_version: int | None = None
    ) -> Snapshot | None:
        """The newest snapshot at or below ``max_version``."""
        ...

    async def delete_snapshots(
        self,
        stream: str | None = None,
        *,
        state_type: str | None = None,
        keep_schema_version: int | None = None,
    ) -> int:
        """Delete snapshots; return how many."""
        ...
