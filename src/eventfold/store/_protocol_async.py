"""The event store protocol: what every store provides, in both flavours.

Code and third-party backends depend on this protocol only; the conformance
suites in :mod:`eventfold.testing` check that a store keeps it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable
from uuid import UUID

from eventfold.events import RecordedEvent
from eventfold.serialization import Serializer
from eventfold.store._checkpoints_async import AsyncCheckpoints, AsyncTransaction, Stop
from eventfold.store._hooks import AsyncAppendHook
from eventfold.store._types import (
    ANY,
    AppendResult,
    Expected,
    Snapshot,
    StreamAppend,
    StreamInfo,
)

__all__ = ["AsyncEventStore"]


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

    async def append_many(self, appends: Sequence[StreamAppend]) -> list[AppendResult]:
        """Append to several streams in one transaction, each with its expectation: all or
        nothing; the results in the order given."""
        ...

    def read(
        self,
        stream: str,
        *,
        from_version: int | None = None,
        to_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Yield a stream's events from one version to another (inclusive), in pages."""
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
        to_position: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Yield events of the global log with ``after < position <= to_position``."""
        ...

    def subscribe(
        self,
        *,
        after: int = 0,
        types: Sequence[str] | None = None,
        stream_prefix: str | None = None,
        poll_interval: float = 5.0,
        stop: Stop | None = None,
    ) -> AsyncGenerator[RecordedEvent, None]:
        """Yield events after ``after`` like ``read_all``, then new ones until ``stop`` is set."""
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

    def checkpoints(self) -> AsyncCheckpoints:
        """The store's checkpoints, leases and dead letters (what projection runners use)."""
        ...

    async def wait_for(self, projection: str, position: int, *, timeout: float = 5.0) -> int:
        """Wait until ``projection`` has passed ``position``; its checkpoint (read your
        writes). ProjectionBehind after ``timeout``. A store may answer it with
        ``checkpoints().wait_for(projection, position, timeout)``."""
        ...

    def transaction(self, connection: Any = None) -> AbstractAsyncContextManager[AsyncTransaction]:
        """A transaction of the store's database (appends and SQL that commit together).

        ``connection``: the application's own connection to that database, whose
        transaction the appends then join.
        """
        ...

    def add_append_hook(self, hook: AsyncAppendHook) -> None:
        """Run ``hook(transaction, events)`` inside the transaction of every append."""
        ...

    def remove_append_hook(self, hook: AsyncAppendHook) -> None:
        """Stop running ``hook`` in appends."""
        ...

    async def list_snapshots(self, stream: str) -> list[Snapshot]:
        """Every stored snapshot of ``stream``, oldest first."""
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
