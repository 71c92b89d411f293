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

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from eventfold.events import RecordedEvent
from eventfold.serialization import Serializer
from eventfold.store._common import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    Expected,
    StreamInfo,
    StreamState,
)

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendResult",
    "AsyncEventStore",
    "EventStore",
    "Expected",
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
    ) -> Iterator[RecordedEvent]:
        """Yield events of the global log with position > ``after``, in log order."""
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
    ) -> AsyncIterator[RecordedEvent]:
        """Yield events of the global log with position > ``after``, in log order."""
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
