"""Public store API shared by every backend; backends supply row-level I/O.

This module is the async source; ``eventfold._sync.store`` is generated from
it by ``tools/unasync.py`` (run ``python tools/unasync.py`` after editing).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from eventfold.errors import InvalidRequest, StoreClosed
from eventfold.events import RecordedEvent
from eventfold.serialization import Serializer
from eventfold.store._common import (
    ANY,
    AppendResult,
    EncodedEvent,
    Expected,
    Row,
    StreamInfo,
    check_expected,
    check_non_negative,
    check_stream_name,
    decode_rows,
    encode_batch,
)

__all__ = ["AsyncStoreBase"]

_LAST_VERSION = 2**62


class AsyncStoreBase(abc.ABC):
    """Validation, encoding, decoding and paging on top of a backend's row I/O.

    Subclasses implement the ``_``-prefixed abstract methods; they receive
    validated arguments and encoded events, and return stored rows.
    """

    def __init__(self, *, serializer: Serializer | None = None, page_size: int = 500) -> None:
        self.serializer = serializer or Serializer()
        self.page_size = check_non_negative("page_size", page_size, minimum=1)
        self._closed = False

    # -- public API -----------------------------------------------------------------

    async def append(
        self, stream: str, events: Sequence[object], *, expected: Expected = ANY
    ) -> AppendResult:
        """Append ``events`` to ``stream`` atomically.

        ``expected`` is ``ANY``, ``NO_STREAM``, ``STREAM_EXISTS`` or the
        stream's current version; a mismatch raises WrongExpectedVersion and
        writes nothing. Events are plain event objects or ``NewEvent``s; a
        batch whose ids are already stored in this stream is a retry and
        returns the original result.
        """
        self._check_open()
        check_stream_name(stream)
        expected = check_expected(expected)
        batch = encode_batch(self.serializer, events)
        return await self._append(stream, batch, expected)

    async def read(
        self,
        stream: str,
        *,
        from_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Yield events of ``stream`` from ``from_version`` on (or back), in pages.

        A stream without events yields nothing. ``from_version`` defaults to
        the first version (the last one when reading backwards).
        """
        self._check_open()
        check_stream_name(stream)
        if from_version is None:
            cursor = _LAST_VERSION if backwards else 1
        else:
            cursor = check_non_negative("from_version", from_version, minimum=1)
        remaining = _check_limit(limit)
        serializer = self.serializer
        while remaining:
            count = min(self.page_size, remaining)
            page = await self._read_page(stream, cursor, backwards, count)
            for event in decode_rows(serializer, page):
                yield event
            if len(page) < count:
                return
            remaining -= len(page)
            cursor = page[-1][2] - 1 if backwards else page[-1][2] + 1

    async def read_all(
        self,
        *,
        after: int = 0,
        types: Sequence[str] | None = None,
        stream_prefix: str | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Yield events of the global log with position greater than ``after``.

        ``types`` keeps only events of those type names; ``stream_prefix``
        only events of streams whose name starts with it.
        """
        self._check_open()
        check_non_negative("after", after)
        type_list = _check_types(types)
        if stream_prefix is not None and (not isinstance(stream_prefix, str) or not stream_prefix):
            raise InvalidRequest("stream_prefix must be a non-empty str or None")
        remaining = _check_limit(limit)
        serializer = self.serializer
        while remaining:
            count = min(self.page_size, remaining)
            page = await self._read_all_page(after, type_list, stream_prefix, count)
            for event in decode_rows(serializer, page):
                yield event
            if len(page) < count:
                return
            remaining -= len(page)
            after = page[-1][0]

    async def get_stream(self, stream: str) -> StreamInfo | None:
        """Return the stream's version and metadata, or None if it has no events."""
        self._check_open()
        check_stream_name(stream)
        return await self._get_stream(stream)

    async def set_stream_metadata(self, stream: str, metadata: Mapping[str, Any]) -> None:
        """Replace the user metadata of ``stream`` (allowed before its first event)."""
        self._check_open()
        check_stream_name(stream)
        if not isinstance(metadata, Mapping):
            raise InvalidRequest("stream metadata must be a mapping")
        await self._set_stream_metadata(stream, self.serializer.encode_metadata(metadata))

    async def last_position(self) -> int:
        """The position of the newest event in the global log (0 if the log is empty)."""
        self._check_open()
        return await self._last_position()

    async def close(self) -> None:
        """Release resources. Closing twice is harmless; other calls then raise StoreClosed."""
        if not self._closed:
            self._closed = True
            await self._close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"{type(self).__name__} is closed")

    # -- backend I/O ------------------------------------------------------------------

    @abc.abstractmethod
    async def _append(
        self, stream: str, batch: list[EncodedEvent], expected: Expected
    ) -> AppendResult:
        """Check ``expected`` and idempotency, store the batch, all in one transaction."""

    @abc.abstractmethod
    async def _read_page(
        self, stream: str, cursor: int, backwards: bool, count: int
    ) -> Sequence[Row]:
        """Up to ``count`` rows of ``stream`` from version ``cursor`` (inclusive)."""

    @abc.abstractmethod
    async def _read_all_page(
        self, after: int, types: list[str] | None, prefix: str | None, count: int
    ) -> Sequence[Row]:
        """Up to ``count`` rows of the global log with position > ``after``."""

    @abc.abstractmethod
    async def _get_stream(self, stream: str) -> StreamInfo | None:
        """Current version and metadata of ``stream``."""

    @abc.abstractmethod
    async def _set_stream_metadata(self, stream: str, metadata: bytes | None) -> None:
        """Store encoded stream metadata."""

    @abc.abstractmethod
    async def _last_position(self) -> int:
        """Highest position visible to readers."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Release backend resources."""


def _check_limit(limit: int | None) -> int:
    if limit is None:
        return _LAST_VERSION
    return check_non_negative("limit", limit)


def _check_types(types: Sequence[str] | None) -> list[str] | None:
    if types is None:
        return None
    if isinstance(types, str) or not all(isinstance(t, str) for t in types):
        raise InvalidRequest("types must be a sequence of event type names")
    return list(types)
