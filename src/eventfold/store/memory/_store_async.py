"""The in-memory event store: the reference semantics, as plain code.

Events are encoded on append and decoded on read exactly as in the durable
stores, so code tested against this store behaves the same on SQLite and
PostgreSQL (a payload that cannot be serialised fails here too).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager  # unasync: from contextlib import contextmanager

from eventfold._acompat import AsyncOffload
from eventfold._clock import now_us, us_to_datetime
from eventfold.errors import StreamDeleted
from eventfold.serialization import Serializer
from eventfold.store._base_async import AsyncStoreBase, Wait
from eventfold.store._checkpoints_async import AsyncCheckpoints
from eventfold.store._rows import (
    ID,
    POSITION,
    RECORDED_AT,
    STREAM,
    VERSION,
    EncodedEvent,
    Row,
    row_matches,
)
from eventfold.store._rules import (
    decode_deletion,
    deletion_version,
    encode_deletion,
    ensure_expected,
    idempotent_result,
    is_hard_deletion,
    nothing_appended,
    restore_needed,
    retried_many,
    truncation_point,
)
from eventfold.store._types import AppendResult, Expected, Snapshot, StreamInfo
from eventfold.store.memory._checkpoints_async import AsyncMemoryCheckpoints

__all__ = ["AsyncMemoryEventStore"]


class AsyncMemoryEventStore(AsyncStoreBase):
    """An event store held in process memory; safe to share between threads.

    Nothing is persisted: use it in tests and prototypes. Positions follow
    commit order (1, 2, 3, ...; erased events leave holes).
    """

    _db_system = "memory"

    def __init__(self, *, serializer: Serializer | None = None, page_size: int = 500) -> None:
        super().__init__(serializer=serializer, page_size=page_size)
        # A plain lock is right for both flavours: it is never held across an await.
        self._lock = threading.Lock()
        # Notified on every append: lets in-process followers wait without polling.
        self._appended = threading.Condition(self._lock)
        # Index = position - 1; erased events become None so positions never move.
        self._log: list[Row | None] = []
        self._streams: dict[str, list[Row]] = {}
        self._ids: dict[bytes, tuple[str, int, int]] = {}
        self._metadata: dict[str, bytes | None] = {}
        self._deleted: dict[str, bytes] = {}
        self._truncated: dict[str, bytes] = {}
        self._snapshots: dict[str, dict[int, Snapshot]] = {}

    def _make_checkpoints(self) -> AsyncCheckpoints:
        return AsyncMemoryCheckpoints(self)

    async def _append(
        self, stream: str, batch: list[EncodedEvent], expected: Expected
    ) -> AppendResult:
        return self._store_batches([(stream, batch, expected)])[0]

    async def _append_many(
        self, appends: list[tuple[str, list[EncodedEvent], Expected]]
    ) -> list[AppendResult]:
        return self._store_batches(appends)

    def _store_batches(
        self, appends: list[tuple[str, list[EncodedEvent], Expected]]
    ) -> list[AppendResult]:
        """Check every batch (retry, lifecycle, expectation), then store them all."""
        with self._lock:
            ids = self._ids
            retried = [
                idempotent_result(stream, batch, {e.id: ids[e.id] for e in batch if e.id in ids})
                for stream, batch, _ in appends
            ]
            if retried_many(appends, retried):
                return [
                    result if result is not None else self._empty_result(stream)
                    for (stream, _, _), result in zip(appends, retried, strict=True)
                ]
            actuals = []
            for stream, _, expected in appends:
                if stream in self._deleted:
                    raise StreamDeleted(stream, self._is_hard_deleted(stream))
                rows = self._streams.get(stream)
                actual = rows[-1][VERSION] if rows else 0
                ensure_expected(stream, expected, actual)
                actuals.append(actual)
            recorded_at = now_us()
            next_position = len(self._log) + 1
            planned: list[list[Row]] = []
            for (stream, batch, _), actual in zip(appends, actuals, strict=True):
                planned.append(
                    [
                        (
                            next_position + i,
                            stream,
                            actual + 1 + i,
                            event.id,
                            event.type,
                            event.schema_version,
                            event.data,
                            event.metadata,
                            recorded_at,
                        )
                        for i, event in enumerate(batch)
                    ]
                )
                next_position += len(batch)
            # Inline projections first: if one raises, nothing has been stored.
            for new_rows in planned:
                if new_rows:
                    self._call_inline(None, new_rows)
            results = []
            for (stream, _, _), actual, new_rows in zip(appends, actuals, planned, strict=True):
                if not new_rows:
                    results.append(nothing_appended(stream, actual))
                    continue
                self._streams.setdefault(stream, []).extend(new_rows)
                self._log.extend(new_rows)
                for row in new_rows:
                    ids[row[ID]] = (stream, row[VERSION], row[POSITION])
                positions = tuple(row[POSITION] for row in new_rows)
                version = actual + len(new_rows)
                results.append(AppendResult(stream, actual + 1, version, positions[-1], positions))
            if any(planned):
                self._appended.notify_all()
            return results

    def _empty_result(self, stream: str) -> AppendResult:
        """An empty batch's result: the stream's version, nothing written."""
        rows = self._streams.get(stream)
        actual = rows[-1][VERSION] if rows else 0
        return nothing_appended(stream, actual)

    async def _read_page(
        self, stream: str, cursor: int, backwards: bool, count: int
    ) -> Sequence[Row]:
        with self._lock:
            if stream in self._deleted:
                return []
            rows = self._streams.get(stream, [])
            first = rows[0][VERSION] if rows else 1
            if backwards:
                end = min(cursor - first + 1, len(rows))
                return rows[max(0, end - count) : end][::-1] if end > 0 else []
            start = max(cursor - first, 0)
            return rows[start : start + count]

    async def _read_all_page(
        self, after: int, types: list[str] | None, prefix: str | None, count: int
    ) -> Sequence[Row]:
        with self._lock:
            wanted = frozenset(types) if types is not None else None
            deleted = self._deleted
            page: list[Row] = []
            for row in self._log[after:]:
                if (
                    row is not None
                    and row[STREAM] not in deleted
                    and row_matches(row, wanted, prefix)
                ):
                    page.append(row)
                    if len(page) == count:
                        break
            return page

    async def _get_stream(self, stream: str) -> StreamInfo | None:
        with self._lock:
            rows = self._streams.get(stream)
            deletion = decode_deletion(self._deleted.get(stream))
            if not rows and deletion is None:
                return None
            truncation = decode_deletion(self._truncated.get(stream))
            version = rows[-1][VERSION] if rows else deletion[1] if deletion else 0
            return StreamInfo(
                stream,
                version,
                self.serializer.decode_metadata(self._metadata.get(stream)),
                rows[0][VERSION] if rows else version + 1,
                deletion[0] if deletion else None,
                truncation[0] if truncation else None,
            )

    async def _set_stream_metadata(self, stream: str, metadata: bytes | None) -> None:
        with self._lock:
            self._metadata[stream] = metadata

    async def _last_position(self) -> int:
        with self._lock:
            return len(self._log)

    @asynccontextmanager  # unasync: @contextmanager
    async def _follow(self) -> AsyncIterator[Wait]:
        async def wait(after: int, timeout: float) -> bool:
            # The async flavour waits on a worker thread: the condition is a
            # threading one, notified by appends from any thread or loop.
            return await AsyncOffload.call(self._wait_for_append, after, timeout)

        yield wait

    def _wait_for_append(self, after: int, timeout: float) -> bool:
        """Block until the log holds events after ``after`` or ``timeout`` passes; say which."""
        with self._appended:
            return self._appended.wait_for(lambda: len(self._log) > after, timeout)

    async def _close(self) -> None:
        return None

    def _backlog(self, after: int) -> tuple[int, int | None]:
        """Events after ``after`` (of streams not deleted) and the oldest one's time (µs)."""
        with self._lock:
            deleted = self._deleted
            rows = [r for r in self._log[after:] if r is not None and r[STREAM] not in deleted]
            return len(rows), (rows[0][RECORDED_AT] if rows else None)

    def _row_at(self, position: int) -> Row | None:
        """The stored row at ``position`` (None if erased or never written)."""
        with self._lock:
            if 1 <= position <= len(self._log):
                return self._log[position - 1]
            return None

    async def _find_event(self, event_id: bytes) -> Row | None:
        with self._lock:
            place = self._ids.get(event_id)
            if place is None or place[0] in self._deleted:
                return None
            return self._log[place[2] - 1]

    def _state(self, stream: str) -> tuple[int, bytes | None]:
        rows = self._streams.get(stream)
        return (rows[-1][VERSION] if rows else 0), self._deleted.get(stream)

    async def _delete_stream(self, stream: str, hard: bool, by: str, reason: str) -> None:
        with self._lock:
            version = deletion_version(stream, *self._state(stream), hard)
            if version is None:
                return
            self._deleted[stream] = encode_deletion(by, reason, hard, version)
            if hard:
                self._erase(self._streams.pop(stream, []))

    async def _restore_stream(self, stream: str) -> None:
        with self._lock:
            if restore_needed(stream, *self._state(stream)):
                del self._deleted[stream]

    async def _truncate_stream(self, stream: str, before: int, by: str, reason: str) -> int:
        with self._lock:
            keep_from = truncation_point(stream, *self._state(stream), before)
            rows = self._streams[stream]
            erased = [row for row in rows if row[VERSION] < keep_from]
            if erased:
                self._streams[stream] = rows[len(erased) :]
                self._erase(erased)
                self._truncated[stream] = encode_deletion(by, reason, True, keep_from)
            return len(erased)

    async def _save_snapshot(
        self, stream: str, version: int, state_type: str, schema_version: int, data: bytes
    ) -> None:
        snapshot = Snapshot(
            stream, version, state_type, schema_version, data, us_to_datetime(now_us())
        )
        with self._lock:
            self._snapshots.setdefault(stream, {})[version] = snapshot

    async def _load_snapshot(self, stream: str, max_version: int) -> Snapshot | None:
        with self._lock:
            versions = [v for v in self._snapshots.get(stream, {}) if v <= max_version]
            return self._snapshots[stream][max(versions)] if versions else None

    async def _list_snapshots(self, stream: str) -> list[Snapshot]:
        with self._lock:
            by_version = self._snapshots.get(stream, {})
            return [by_version[v] for v in sorted(by_version)]

    async def _delete_snapshots(
        self, stream: str | None, state_type: str | None, keep_schema_version: int | None
    ) -> int:
        with self._lock:
            deleted = 0
            for name, by_version in self._snapshots.items():
                if stream is not None and name != stream:
                    continue
                for version, snap in list(by_version.items()):
                    if (state_type is None or snap.state_type == state_type) and (
                        keep_schema_version is None or snap.schema_version != keep_schema_version
                    ):
                        del by_version[version]
                        deleted += 1
            return deleted

    def _is_hard_deleted(self, stream: str) -> bool:
        return is_hard_deletion(self._deleted.get(stream))

    def _erase(self, rows: list[Row]) -> None:
        for row in rows:
            self._log[row[POSITION] - 1] = None
            self._ids.pop(row[ID], None)
