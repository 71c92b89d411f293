"""The in-memory event store: the reference semantics, as plain code.

Events are encoded on append and decoded on read exactly as in the durable
stores, so code tested against this store behaves the same on SQLite and
PostgreSQL (a payload that cannot be serialised fails here too).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from eventfold._async.store import AsyncStoreBase
from eventfold.serialization import Serializer
from eventfold.store._common import (
    AppendResult,
    EncodedEvent,
    Expected,
    Row,
    StreamInfo,
    ensure_expected,
    idempotent_result,
    now_us,
)

__all__ = ["AsyncMemoryEventStore"]


class AsyncMemoryEventStore(AsyncStoreBase):
    """An event store held in process memory; safe to share between threads.

    Nothing is persisted: use it in tests and prototypes. Positions are dense
    (1, 2, 3, ...) and follow commit order.
    """

    def __init__(self, *, serializer: Serializer | None = None, page_size: int = 500) -> None:
        super().__init__(serializer=serializer, page_size=page_size)
        # A plain lock is right for both flavours: it is never held across an await.
        self._lock = threading.Lock()
        self._log: list[Row] = []
        self._streams: dict[str, list[Row]] = {}
        self._ids: dict[bytes, tuple[str, int, int]] = {}
        self._metadata: dict[str, bytes | None] = {}

    async def _append(
        self, stream: str, batch: list[EncodedEvent], expected: Expected
    ) -> AppendResult:
        with self._lock:
            ids = self._ids
            found = {e.id: ids[e.id] for e in batch if e.id in ids}
            retried = idempotent_result(stream, batch, found)
            if retried is not None:
                return retried
            rows = self._streams.get(stream)
            actual = len(rows) if rows is not None else 0
            ensure_expected(stream, expected, actual)
            if not batch:
                return AppendResult(stream, actual + 1, actual, 0)
            if rows is None:
                rows = self._streams[stream] = []
            recorded_at = now_us()
            position = len(self._log)
            version = actual
            for event in batch:
                position += 1
                version += 1
                row: Row = (
                    position,
                    stream,
                    version,
                    event.id,
                    event.type,
                    event.schema_version,
                    event.data,
                    event.metadata,
                    recorded_at,
                )
                rows.append(row)
                self._log.append(row)
                ids[event.id] = (stream, version, position)
            return AppendResult(stream, actual + 1, version, position)

    async def _read_page(
        self, stream: str, cursor: int, backwards: bool, count: int
    ) -> Sequence[Row]:
        with self._lock:
            rows = self._streams.get(stream, [])
            if backwards:
                end = min(cursor, len(rows))
                return rows[max(0, end - count) : end][::-1]
            return rows[cursor - 1 : cursor - 1 + count]

    async def _read_all_page(
        self, after: int, types: list[str] | None, prefix: str | None, count: int
    ) -> Sequence[Row]:
        with self._lock:
            log = self._log
            if types is None and prefix is None:
                return log[after : after + count]
            wanted = set(types) if types is not None else None
            page: list[Row] = []
            for row in log[after:]:
                if (wanted is None or row[4] in wanted) and (
                    prefix is None or row[1].startswith(prefix)
                ):
                    page.append(row)
                    if len(page) == count:
                        break
            return page

    async def _get_stream(self, stream: str) -> StreamInfo | None:
        with self._lock:
            rows = self._streams.get(stream)
            if not rows:
                return None
            meta = self.serializer.decode_metadata(self._metadata.get(stream))
            return StreamInfo(stream, len(rows), meta)

    async def _set_stream_metadata(self, stream: str, metadata: bytes | None) -> None:
        with self._lock:
            self._metadata[stream] = metadata

    async def _last_position(self) -> int:
        with self._lock:
            return len(self._log)

    async def _close(self) -> None:
        return None
