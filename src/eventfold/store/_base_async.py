"""Public store API shared by every backend; backends supply row-level I/O."""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from types import TracebackType
from typing import Any, Self
from uuid import UUID

from eventfold import telemetry
from eventfold._acompat import FIRST_POLL, AsyncClock, next_poll
from eventfold._checks import (
    MAX_VERSION,
    check_bool,
    check_non_negative,
    check_position,
    check_seconds,
)
from eventfold._clock import datetime_to_us
from eventfold._logs import fields
from eventfold.errors import InvalidRequest, StoreClosed, StoreError, WrongExpectedVersion
from eventfold.events import RecordedEvent
from eventfold.serialization import Serializer
from eventfold.store._checkpoints_async import (
    AsyncCheckpoints,
    AsyncDirectTransaction,
    AsyncProcessCheckpoints,
    AsyncTransaction,
    Stop,
    async_wait_in_slices,
)
from eventfold.store._hooks import (
    AsyncAppendHook,
    AsyncHookTransaction,
    finish,  # unasync: remove
)
from eventfold.store._rows import (
    POSITION,
    RECORDED_AT,
    VERSION,
    EncodedEvent,
    Row,
    decode_rows,
    decode_rows_partial,
    encode_batch,
)
from eventfold.store._rules import (
    check_expected,
    check_many_ids,
    check_stream_name,
    check_who_why,
)
from eventfold.store._types import (
    ANY,
    AppendResult,
    Expected,
    Snapshot,
    StreamAppend,
    StreamInfo,
)

__all__ = ["AsyncStoreBase", "Wait"]

logger = logging.getLogger("eventfold.store")

_LAST_VERSION = 2**62

#: ``wait(after, timeout)``: return True once events after position ``after``
#: may exist, False after ``timeout`` seconds (a subscription's wait for news).
Wait = Callable[[int, float], Awaitable[bool]]  # unasync: Wait = Callable[[int, float], bool]


class AsyncStoreBase(abc.ABC):
    """Validation, encoding, decoding and paging on top of a backend's row I/O.

    Subclasses implement the ``_``-prefixed abstract methods; they receive
    validated arguments and encoded events, and return stored rows. Every
    argument is checked here, before any I/O: a version or count is an int
    up to 2**63-1, a position any int >= 0 (one beyond ``_max_position``,
    the largest the backend issues, is after every event), a flag a bool.
    """

    #: The largest position this backend can issue.
    _max_position: int = MAX_VERSION
    #: ``db.system.name`` in telemetry.
    _db_system: str = "other"

    def __init__(self, *, serializer: Serializer | None = None, page_size: int = 500) -> None:
        self.serializer = serializer or Serializer()
        self.page_size = check_non_negative("page_size", page_size, minimum=1)
        self._closed = False
        # Append hooks (inline projections): run inside every append's transaction.
        self._inline: list[AsyncAppendHook] = []
        self._checkpoints: AsyncCheckpoints | None = None

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
        checked = self._checked_append(stream, events, expected)
        if not telemetry.active():
            return await self._append(*checked)
        return await self._append_observed(*checked)

    async def _append_observed(
        self, stream: str, batch: list[EncodedEvent], expected: Expected
    ) -> AppendResult:
        """An append in a span, timed, its conflicts counted (telemetry on)."""
        attributes = {
            "db.system.name": self._db_system,
            "db.operation.name": "append",
            "messaging.destination.name": stream,
            "eventfold.stream": stream,
        }
        with telemetry.span(
            "eventfold.append",
            {**attributes, "messaging.batch.message_count": len(batch)},
            kind="producer",
        ) as current:
            try:
                with telemetry.timed("eventfold.append.duration", attributes):
                    result = await self._append(stream, batch, expected)
            except WrongExpectedVersion:
                telemetry.record("eventfold.append.conflicts", 1, attributes)
                raise
            done = {"eventfold.version": result.to_version, "eventfold.position": result.position}
            telemetry.set_attributes(current, done)
            return result

    def _checked_append(
        self, stream: str, events: Sequence[object], expected: Expected
    ) -> tuple[str, list[EncodedEvent], Expected]:
        """Validate an append's arguments and encode its events, before any I/O."""
        self._check_open()
        check_stream_name(stream)
        expected = check_expected(expected)
        return stream, encode_batch(self.serializer, events), expected

    async def append_many(self, appends: Sequence[StreamAppend]) -> list[AppendResult]:
        """Append to several streams at once, each with its own expectation: all or nothing.

        Each :class:`StreamAppend` names a stream, its events and the
        ``expected`` version as for :meth:`append`; the results come in the
        order given. It all happens in one transaction: if a stream's
        expectation fails it raises WrongExpectedVersion for that stream (the
        first failing one, in the order given), a deleted stream raises
        StreamDeleted, and nothing is written to any stream. A stream may be
        named once per call. The events of one call are stored together in the
        global log, each stream's in version order; the order of the streams
        among them is the backend's (PostgreSQL writes them in stream name
        order). A call whose batches are all stored already (their event ids)
        is a retry and returns the original results; one whose batches are
        stored only in part raises InvalidRequest (reused ids). Append hooks
        run once per stream's batch, inside the same transaction.

        An empty batch only checks its stream's expectation. On PostgreSQL that
        check is not held until the commit (nothing is written to hold it):
        to keep a stream where it is until the others are written, append to it.
        """
        checked = self._checked_append_many(appends)
        return await self._append_many(checked) if checked else []

    def _checked_append_many(
        self, appends: Sequence[StreamAppend]
    ) -> list[tuple[str, list[EncodedEvent], Expected]]:
        """Validate a multi-stream append and encode every batch, before any I/O."""
        self._check_open()
        if isinstance(appends, (str, bytes, StreamAppend)) or not isinstance(appends, Sequence):
            raise InvalidRequest(
                f"appends must be a sequence (list or tuple) of StreamAppend, not "
                f"{type(appends).__name__}"
            )
        checked: list[tuple[str, list[EncodedEvent], Expected]] = []
        seen: set[str] = set()
        for index, part in enumerate(appends):
            if not isinstance(part, StreamAppend):
                raise InvalidRequest(
                    f"appends[{index}] must be a StreamAppend, not {type(part).__name__}"
                )
            stream, batch, expected = self._checked_append(part.stream, part.events, part.expected)
            if stream in seen:
                raise InvalidRequest(
                    f"appends name stream {stream!r} twice: give each stream one StreamAppend"
                )
            seen.add(stream)
            checked.append((stream, batch, expected))
        check_many_ids(checked)
        return checked

    # -- seams: checkpoints, transactions, append hooks ---------------------------------

    async def wait_for(self, projection: str, position: int, *, timeout: float = 5.0) -> int:
        """Wait until projection ``projection`` has passed ``position``; return its checkpoint.

        Read your writes: after an append (``AppendResult.position``, or a
        command's ``CommandResult.position``), wait for the read model that
        shows it. It works from any process, not only the runner's: it watches
        the stored checkpoint (a SQL or external read model's; an in-memory
        projection has none outside its runner). ``projection`` may be an alias
        (a blue/green switch). PostgreSQL hears of each checkpoint move
        (NOTIFY); SQLite and the memory store poll it, from 0.2 ms backing off
        to 50 ms. Raises ProjectionBehind after ``timeout`` seconds.
        """
        self._check_open()
        return await self.checkpoints().wait_for(projection, position, timeout)

    def checkpoints(self) -> AsyncCheckpoints:
        """The store's checkpoints, leases and dead letters (what projection runners use).

        One object per store: runners of one process share it.
        """
        self._check_open()
        if self._checkpoints is None:
            self._checkpoints = self._make_checkpoints()
        return self._checkpoints

    def transaction(self, connection: Any = None) -> AbstractAsyncContextManager[AsyncTransaction]:
        """A transaction of the store's database: ``async with store.transaction() as tx``.

        What is written through it (``tx.execute``, ``tx.append``, a
        checkpoint advanced in it) commits together when the block ends, or
        rolls back if it raises. Keep it short: on SQLite it holds the write
        lock, on PostgreSQL readers of the log wait for it to end once it has
        written. A store without transactions (the memory store) yields one
        whose appends are immediate and that has no SQL.

        ``connection``: your own connection to the store's database (a
        psycopg connection for PostgreSQL, a sqlite3 connection to the
        store's file), so that your writes on it and the events commit or
        roll back together. If the connection is idle, the transaction begins here
        and commits when the block ends; inside a transaction you opened, it
        joins it and your commit decides (on PostgreSQL a savepoint undoes
        the block if it raises).
        """
        self._check_open()
        if connection is None:
            return self._transaction()
        return self._transaction_on(connection)

    def add_append_hook(self, hook: AsyncAppendHook) -> None:
        """Run ``hook(transaction, events)`` inside the transaction of every append.

        :meth:`append_many` calls it once per stream's batch, all in the one
        transaction. If the hook raises, the append is rolled back and nothing
        is stored. Remove it with :meth:`remove_append_hook`. On an async store
        the hook may be ``async def``, awaiting its transaction's ``execute``.
        """
        if not callable(hook):
            raise InvalidRequest("an append hook must be callable")
        self._inline.append(hook)

    def remove_append_hook(self, hook: AsyncAppendHook) -> None:
        """Stop running ``hook`` in appends (InvalidRequest if it was never added)."""
        try:
            self._inline.remove(hook)
        except ValueError:
            raise InvalidRequest("that append hook was not added to this store") from None

    def _make_checkpoints(self) -> AsyncCheckpoints:
        """The backend's checkpoints: by default kept in this process (nothing rolls back)."""
        return AsyncProcessCheckpoints(self)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncTransaction]:
        """The backend's transactions: by default none (appends are immediate)."""
        yield AsyncDirectTransaction(self)

    def _transaction_on(self, connection: Any) -> AbstractAsyncContextManager[AsyncTransaction]:
        """The backend's transactions on the application's connection: by default none."""
        raise InvalidRequest(
            f"{type(self).__name__} has no database connections: call transaction() without one"
        )

    def _hook_transaction(self, conn: Any) -> AsyncHookTransaction:
        """The append's transaction as hooks see it (backends set the placeholder style)."""
        return AsyncHookTransaction(conn)

    async def read(
        self,
        stream: str,
        *,
        from_version: int | None = None,
        to_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Yield events of ``stream`` from ``from_version`` to ``to_version``, in pages.

        Both bounds are inclusive and taken in the reading direction:
        forwards ``from_version`` defaults to the first version and
        ``to_version`` to the last; backwards ``from_version`` defaults to the
        last version and ``to_version`` to 1 (``from_version=9,
        to_version=5, backwards=True`` yields 9, 8, 7, 6, 5). A stream without
        events yields nothing; ``limit`` caps the count.
        """
        self._check_open()
        check_stream_name(stream)
        check_bool("backwards", backwards)
        if from_version is None:
            cursor = _LAST_VERSION if backwards else 1
        else:
            cursor = check_non_negative("from_version", from_version, minimum=1)
        remaining = _check_limit(limit)
        bound = None
        if to_version is not None:
            bound = check_non_negative("to_version", to_version, minimum=1)
            # Versions are consecutive: no more events lie between the bounds.
            remaining = min(
                remaining, max((cursor - bound if backwards else bound - cursor) + 1, 0)
            )
        serializer = self.serializer
        while remaining:
            count = min(self.page_size, remaining)
            with telemetry.span(
                "eventfold.read",
                {"db.system.name": self._db_system, "eventfold.stream": stream},
                kind="client",
            ):
                page = await self._read_page(stream, cursor, backwards, count)
            full = len(page) == count
            if bound is not None and page and _beyond(page[-1][VERSION], bound, backwards):
                # A truncated stream starts later than the cursor: cut at the bound.
                page = [r for r in page if not _beyond(r[VERSION], bound, backwards)]
                full = False
            events, error = decode_rows_partial(serializer, page)
            for event in events:
                yield event
            if error is not None:
                raise error
            if not full:
                return
            remaining -= len(page)
            cursor = page[-1][VERSION] - 1 if backwards else page[-1][VERSION] + 1

    async def read_all(
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
        """Yield events of the global log with position greater than ``after``.

        ``to_position`` (inclusive) ends the read there; ``types`` keeps only
        events of those type names; ``stream_prefix`` only events of streams
        whose name starts with it; ``since`` and ``until`` (aware datetimes)
        only events recorded in ``[since, until)``. Events of deleted streams
        are left out. A time window is applied while scanning from ``after``:
        give a recent ``after`` to bound the scan.
        """
        self._check_open()
        check_position("after", after)
        type_list = self._type_filter(types)
        _check_prefix(stream_prefix)
        remaining = _check_limit(limit)
        window = _check_window(since, until)
        last = (
            self._max_position
            if to_position is None
            else check_position("to_position", to_position)
        )
        serializer = self.serializer
        if after >= last:
            return  # no event of this store lies in (after, last]
        while remaining:
            count = min(self.page_size, remaining)
            with telemetry.span(
                "eventfold.read",
                {"db.system.name": self._db_system, "eventfold.position": after},
                kind="client",
            ):
                page = await self._read_all_page(after, type_list, stream_prefix, count)
            if not page:
                return
            after = page[-1][POSITION]
            if after > last:  # the page passes the bound: it is the last one
                page = [r for r in page if r[POSITION] <= last]
            rows = (
                page
                if window is None
                else [r for r in page if window[0] <= r[RECORDED_AT] < window[1]]
            )
            events, error = decode_rows_partial(serializer, rows[:remaining])
            for event in events:
                yield event
            if error is not None:
                raise error
            remaining -= min(len(rows), remaining)
            if len(page) < count or after >= last:
                return

    async def subscribe(
        self,
        *,
        after: int = 0,
        types: Sequence[str] | None = None,
        stream_prefix: str | None = None,
        poll_interval: float = 5.0,
        stop: Stop | None = None,
    ) -> AsyncGenerator[RecordedEvent, None]:
        """Yield the events after position ``after``, then each new one as it commits.

        ``types`` and ``stream_prefix`` filter as in :meth:`read_all`. The
        subscription catches up through ``read_all``, then waits for news:
        PostgreSQL LISTENs for appends, a memory store is woken by them, SQLite
        checks its newest position with a short back-off (at most every 50 ms)
        and is woken at once by commits to its file from the same process.
        A read happens at least every ``poll_interval`` seconds whatever the
        wait says. It runs until the consumer stops iterating (close it to
        release what waiting holds) or until ``stop`` is set: with ``stop``
        (an ``asyncio.Event``) the subscription ends within about 0.1 s if it
        was waiting, or right after the event being handled. Delivery is at least once from your own
        checkpoint: keep the position of each handled event and pass it as
        ``after`` next time, or let a ``ProjectionRunner`` keep it for you.

        Like a ``ProjectionRunner``, a subscription outlives an outage: a
        retryable StoreError (the server restarting, a lost connection) is
        logged as a warning on logger ``eventfold.store`` and the subscription
        resumes after the last event it delivered, so no event is skipped or
        repeated; it retries for as long as the outage lasts, backing off
        from ``poll_interval / 10`` to ``poll_interval``. Any other error ends
        it (close the subscription to stop waiting).
        """
        self._check_open()
        cursor = min(check_position("after", after), self._max_position)
        type_list = self._type_filter(types)
        _check_prefix(stream_prefix)
        check_seconds("poll_interval", poll_interval)
        if stop is not None and not callable(getattr(stop, "is_set", None)):
            raise InvalidRequest(f"stop must be an event with is_set(), not {stop!r}")
        failures = 0
        while stop is None or not stop.is_set():
            try:
                async with self._follow() as wait:
                    while True:
                        # Every event up to `head` is read below: the wait then starts
                        # after it even if the log ends with events the filters skip.
                        head = await self._last_position()
                        if failures:
                            logger.warning(
                                "subscription resumed after position %d (%d failed attempts)",
                                cursor,
                                failures,
                                extra=fields(position=cursor),
                            )
                            failures = 0
                        async for event in self.read_all(
                            after=cursor, types=type_list, stream_prefix=stream_prefix
                        ):
                            yield event
                            cursor = event.position
                            if stop is not None and stop.is_set():
                                return
                        cursor = max(cursor, head)
                        if stop is None:
                            await wait(cursor, poll_interval)
                            continue

                        async def news(seconds: float, after: int = cursor) -> bool:
                            return await wait(after, seconds)

                        await async_wait_in_slices(stop, poll_interval, news)
                        if stop.is_set():
                            return
            except StoreError as exc:
                if not exc.retryable:
                    raise
                failures += 1
                pause = min(poll_interval / 10 * 2 ** min(failures - 1, 10), poll_interval)
                logger.warning(
                    "subscription after position %d: %s: %s; resuming in %.2f s",
                    cursor,
                    type(exc).__name__,
                    exc,
                    pause,
                    extra=fields(position=cursor),
                )
                if stop is None:
                    await AsyncClock.sleep(pause)
                else:
                    await async_wait_in_slices(stop, pause, _pause)

    async def find_event(self, event_id: UUID) -> RecordedEvent | None:
        """The event with id ``event_id``, or None (also for events of deleted streams)."""
        self._check_open()
        if not isinstance(event_id, UUID):
            raise InvalidRequest(f"event_id must be a UUID, not {event_id!r}")
        row = await self._find_event(event_id.bytes)
        return None if row is None else decode_rows(self.serializer, (row,))[0]

    async def delete_stream(
        self, stream: str, *, hard: bool = False, by: str = "", reason: str = ""
    ) -> None:
        """Delete ``stream``: its events disappear from ``read`` and ``read_all``.

        A soft delete (default) keeps the events and can be undone with
        :meth:`restore_stream`; ``hard=True`` erases them for good (data
        retention, erasure requests). Either way the stream's info keeps who
        deleted it, when and why, and appending to it raises StreamDeleted.
        Followers of ``read_all`` are unaffected: positions never move.
        """
        self._check_open()
        check_stream_name(stream)
        check_bool("hard", hard)
        check_who_why(by, reason)
        await self._delete_stream(stream, hard, by, reason)

    async def restore_stream(self, stream: str) -> None:
        """Undo a soft delete (a hard delete cannot be undone)."""
        self._check_open()
        check_stream_name(stream)
        await self._restore_stream(stream)

    async def truncate_stream(
        self, stream: str, before_version: int, *, by: str = "", reason: str = ""
    ) -> int:
        """Erase the events of ``stream`` older than ``before_version``; return how many.

        For retention: the stream keeps its version and at least its newest
        event; reads start at ``before_version`` (see ``StreamInfo.first_version``).
        """
        self._check_open()
        check_stream_name(stream)
        check_non_negative("before_version", before_version, minimum=1)
        check_who_why(by, reason)
        return await self._truncate_stream(stream, before_version, by, reason)

    async def save_snapshot(
        self, stream: str, version: int, state_type: str, schema_version: int, data: bytes
    ) -> None:
        """Store a snapshot of the state of ``stream`` right after ``version``."""
        self._check_open()
        check_stream_name(stream)
        check_non_negative("version", version, minimum=1)
        check_non_negative("schema_version", schema_version, minimum=1)
        if not isinstance(state_type, str) or not state_type:
            raise InvalidRequest("state_type must be a non-empty str")
        if not isinstance(data, bytes):
            raise InvalidRequest("snapshot data must be bytes")
        await self._save_snapshot(stream, version, state_type, schema_version, data)

    async def load_snapshot(
        self, stream: str, *, max_version: int | None = None
    ) -> Snapshot | None:
        """The newest snapshot of ``stream`` at or below ``max_version`` (default: any)."""
        self._check_open()
        check_stream_name(stream)
        limit = (
            _LAST_VERSION if max_version is None else check_non_negative("max_version", max_version)
        )
        return await self._load_snapshot(stream, limit)

    async def list_snapshots(self, stream: str) -> list[Snapshot]:
        """Every stored snapshot of ``stream``, oldest first."""
        self._check_open()
        check_stream_name(stream)
        return await self._list_snapshots(stream)

    async def delete_snapshots(
        self,
        stream: str | None = None,
        *,
        state_type: str | None = None,
        keep_schema_version: int | None = None,
    ) -> int:
        """Delete snapshots (of one stream, one state type, or all) and return how many.

        With ``keep_schema_version``, only snapshots of another schema version
        are deleted: the stale ones after a state class changed.
        """
        self._check_open()
        if stream is not None:
            check_stream_name(stream)
        if state_type is not None and (not isinstance(state_type, str) or not state_type):
            raise InvalidRequest("state_type must be a non-empty str or None")
        if keep_schema_version is not None:
            check_non_negative("keep_schema_version", keep_schema_version, minimum=1)
        return await self._delete_snapshots(stream, state_type, keep_schema_version)

    async def get_stream(self, stream: str) -> StreamInfo | None:
        """Return the stream's version, metadata and lifecycle, or None if it never had events."""
        self._check_open()
        check_stream_name(stream)
        return await self._get_stream(stream)

    async def set_stream_metadata(self, stream: str, metadata: Mapping[str, Any]) -> None:
        """Replace the user metadata of ``stream`` (allowed before its first event)."""
        self._check_open()
        check_stream_name(stream)
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

    def _type_filter(self, types: Sequence[str] | None) -> list[str] | None:
        """The stored type names a ``types`` filter matches (renamed types included)."""
        checked = _check_types(types)
        return None if checked is None else self.serializer.registry.stored_names(checked)

    def _call_inline(self, conn: Any, rows: list[Row]) -> None:
        """Run the append hooks inside an append's transaction (``conn``) on its rows.

        Called where the append runs (a thread, under a lock): an async hook
        is run to its end at once (``finish``), as it may wait for nothing.
        """
        tx = self._hook_transaction(conn)
        events = decode_rows(self.serializer, rows)
        for hook in list(self._inline):
            result = hook(tx, events)  # unasync: hook(tx, events)
            if result is not None:  # unasync: remove
                finish(result)  # unasync: remove

    async def _await_inline(self, conn: Any, rows: list[Row]) -> None:
        """Run the append hooks on an append's connection ``conn``, awaiting async ones."""
        tx = self._hook_transaction(conn)
        events = decode_rows(self.serializer, rows)
        for hook in list(self._inline):
            result = hook(tx, events)  # unasync: hook(tx, events)
            if result is not None:  # unasync: remove
                await result  # unasync: remove

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
    async def _append_many(
        self, appends: list[tuple[str, list[EncodedEvent], Expected]]
    ) -> list[AppendResult]:
        """Check every expectation and idempotency, store every batch, in one transaction.

        ``appends`` holds validated (stream, batch, expected) triples, each
        stream once; an empty list never reaches the backend.
        """

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

    def _log_pages(
        self,
        after: int,
        types: list[str] | None,
        prefix: str | None,
        count: int,
        *,
        read_ahead: bool = False,
    ) -> AsyncGenerator[Sequence[Row], None]:
        """Pages of the log for a consumer: read ahead only if asked and the backend can."""
        if read_ahead:
            return self._read_all_pages(after, types, prefix, count)
        return AsyncStoreBase._read_all_pages(self, after, types, prefix, count)

    async def _read_all_pages(
        self, after: int, types: list[str] | None, prefix: str | None, count: int
    ) -> AsyncGenerator[Sequence[Row], None]:
        """Pages (at most ``count`` rows each) of the global log after ``after``, to its end.

        For a caller that handles a whole backlog page by page (a projection
        catching up). This default reads page after page; a backend may
        override it to read ahead while the caller handles a page. Close the
        generator when stopping early.
        """
        while True:
            page = await self._read_all_page(after, types, prefix, count)
            if not page:
                return
            yield page
            if len(page) < count:
                return
            after = page[-1][POSITION]

    @asynccontextmanager  # unasync: @contextmanager
    async def _follow(self) -> AsyncIterator[Wait]:
        """How a subscription waits for news; held while it runs.

        This default polls the newest position, backing off from 1 ms to
        50 ms. Backends that can be told of appends (LISTEN, a condition)
        override it.
        """

        async def wait(after: int, timeout: float) -> bool:
            deadline = time.monotonic() + timeout
            pause = FIRST_POLL
            while await self._last_position() <= after:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                await AsyncClock.sleep(min(pause, remaining))
                pause = next_poll(pause)
            return True

        yield wait

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

    @abc.abstractmethod
    async def _find_event(self, event_id: bytes) -> Row | None:
        """The row of an event by id, unless its stream is deleted."""

    @abc.abstractmethod
    async def _delete_stream(self, stream: str, hard: bool, by: str, reason: str) -> None:
        """Mark the stream deleted (and erase its events if ``hard``)."""

    @abc.abstractmethod
    async def _restore_stream(self, stream: str) -> None:
        """Clear a soft delete; raise StreamNotFound/StreamDeleted when impossible."""

    @abc.abstractmethod
    async def _truncate_stream(self, stream: str, before: int, by: str, reason: str) -> int:
        """Erase events with version < ``before`` (keeping the newest); return the count."""

    @abc.abstractmethod
    async def _save_snapshot(
        self, stream: str, version: int, state_type: str, schema_version: int, data: bytes
    ) -> None:
        """Insert or replace the snapshot of (stream, version)."""

    @abc.abstractmethod
    async def _load_snapshot(self, stream: str, max_version: int) -> Snapshot | None:
        """The snapshot of ``stream`` with the highest version <= ``max_version``."""

    @abc.abstractmethod
    async def _list_snapshots(self, stream: str) -> list[Snapshot]:
        """Every snapshot of ``stream``, by version."""

    @abc.abstractmethod
    async def _delete_snapshots(
        self, stream: str | None, state_type: str | None, keep_schema_version: int | None
    ) -> int:
        """Delete matching snapshots; return how many."""


async def _pause(seconds: float) -> bool:
    """A step of a stoppable pause: sleep, never done early."""
    await AsyncClock.sleep(seconds)
    return False


def _beyond(version: int, bound: int, backwards: bool) -> bool:
    """Whether ``version`` lies past ``bound`` in the reading direction."""
    return version < bound if backwards else version > bound


def _check_limit(limit: int | None) -> int:
    if limit is None:
        return _LAST_VERSION
    return check_non_negative("limit", limit, maximum=None)


def _check_window(since: datetime | None, until: datetime | None) -> tuple[int, int] | None:
    if since is None and until is None:
        return None
    bounds = []
    for name, value, default in (("since", since, 0), ("until", until, _LAST_VERSION)):
        if value is None:
            bounds.append(default)
        elif not isinstance(value, datetime) or value.tzinfo is None:
            raise InvalidRequest(f"{name} must be a timezone-aware datetime")
        else:
            bounds.append(datetime_to_us(value))
    return bounds[0], bounds[1]


def _check_prefix(stream_prefix: str | None) -> None:
    if stream_prefix is not None and (not isinstance(stream_prefix, str) or not stream_prefix):
        raise InvalidRequest("stream_prefix must be a non-empty str or None")


def _check_types(types: Sequence[str] | None) -> list[str] | None:
    if types is None:
        return None
    if isinstance(types, str) or not all(isinstance(t, str) for t in types):
        raise InvalidRequest("types must be a sequence of event type names")
    return list(types)
