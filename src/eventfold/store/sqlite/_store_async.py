"""The SQLite event store: the embedded default, one file, no server.

The file uses WAL mode (readers never block the writer) and the durability
you choose (``full`` by default: every acknowledged append survives power
loss). Several threads and several processes may use one file: appends take
SQLite's write lock before checking the expected version, so two writers of
one stream get one winner and one WrongExpectedVersion, never a duplicated
version. Writers are serialised, so positions follow commit order and a
tailing ``read_all`` reader never skips an event. A writer waits at most
``busy_timeout`` for the write lock, then gets StoreTimeout naming who holds it.

eventfold marks its files (``PRAGMA application_id``) and refuses another
application's database instead of adding its tables to it. ``read_only=True``
opens an existing file for reading only (a backup, a read-only mount): it
never migrates or writes, and every write raises InvalidRequest.
"""

from __future__ import annotations

import asyncio  # unasync: remove
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager  # unasync: from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from eventfold._acompat import AsyncInlineRunner, AsyncRunner
from eventfold.errors import InvalidRequest
from eventfold.serialization import Serializer
from eventfold.store._base_async import AsyncStoreBase, Wait
from eventfold.store._checkpoints_async import STOP_CHECK, AsyncCheckpoints, AsyncTransaction
from eventfold.store._hooks import AsyncHookTransaction
from eventfold.store._rows import EncodedEvent, Row, snapshot_from_row
from eventfold.store._rules import stream_info_from
from eventfold.store._types import ANY, AppendResult, Expected, Snapshot, StreamInfo
from eventfold.store.sqlite import _checkpoint_ops as checkpoint_ops
from eventfold.store.sqlite import _event_ops as ops
from eventfold.store.sqlite._checkpoints_async import AsyncSqliteCheckpoints
from eventfold.store.sqlite._db import Durability, Handle, SqliteDatabase
from eventfold.store.sqlite._errors import closed_error
from eventfold.store.sqlite._turns import AsyncTurn

__all__ = ["AsyncSqliteEventStore"]

P = ParamSpec("P")
T = TypeVar("T")


# Runs the statements of a transaction on the application's own connection.
_INLINE = AsyncInlineRunner()


class AsyncSqliteEventStore(AsyncStoreBase):
    """An event store in one SQLite file.

    :param path: the database file (created if missing; its directory must
        exist) or ``":memory:"`` for a private in-memory database, which lives
        as long as the store and is shared by all the threads using it.
    :param durability: ``"full"`` (default), ``"normal"`` or ``"off"``; see
        :data:`eventfold.store.sqlite.Durability`.
    :param busy_timeout: seconds a writer waits for the write lock (held by
        another thread or process) before StoreTimeout; ``close()`` waits as
        long for running writes.
    :param read_only: open an existing eventfold file for reading only
        (``mode=ro``): no migration, no write; writes raise InvalidRequest.
    """

    _db_system = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "full",
        busy_timeout: float = 5.0,
        serializer: Serializer | None = None,
        page_size: int = 500,
        read_only: bool = False,
    ) -> None:
        super().__init__(serializer=serializer, page_size=page_size)
        self._db = SqliteDatabase(
            path, durability=durability, busy_timeout=busy_timeout, read_only=read_only
        )
        self._runner = AsyncRunner()
        # Transactions a caller drives (store.transaction()): begun, used and
        # ended on one thread, as a sqlite3 transaction must be.
        self._tx_runner = AsyncRunner(max_workers=1)  # unasync: self._tx_runner = Runner()
        # That thread's connection, once known: a transaction then sends BEGIN with
        # its first statement (one trip to the thread less). Sync: each thread's own.
        self._tx_handle: Handle | None = None
        # ...so tasks take turns holding one (threads wait for the write lock).
        self._turn = AsyncTurn(self._db.path, busy_timeout)

    @property
    def path(self) -> str:
        """The database file."""
        return self._db.path

    @property
    def read_only(self) -> bool:
        """Whether the store was opened with ``read_only=True``."""
        return self._db.read_only

    def write_lock_holder(self) -> tuple[str, float] | None:
        """Which thread of this process holds the write lock, and since when.

        ``(thread name, time.monotonic() when it took the lock)``, or None:
        a handler or writer holding it for long shows here.
        """
        return self._db.write_lock_holder()

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        # A read_all iteration goes on calling after close(): it meets StoreClosed.
        if self._db.closed:
            raise closed_error(self._db.path)
        return await self._runner.run(fn, *args, **kwargs)

    def _make_checkpoints(self) -> AsyncCheckpoints:
        return AsyncSqliteCheckpoints(self)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncTransaction]:
        async with self._turn():
            known = self._tx_handle
            if known is None:
                handle = await self._tx_runner.run(self._db.begin_write, "a transaction")
                if _LAZY_BEGIN:
                    self._tx_handle = handle
                tx = AsyncSqliteTransaction(self, handle)
            else:
                tx = AsyncSqliteTransaction(self, known, begun=False)
            try:
                yield tx
            except BaseException:
                if tx._end():
                    await self._tx_runner.run(tx._finish, False)
                raise
            if tx._end():  # else nothing was sent: nothing to commit
                await self._tx_runner.run(tx._finish, True)

    @asynccontextmanager
    async def _transaction_on(self, connection: Any) -> AsyncIterator[AsyncTransaction]:
        # The application's own sqlite3 connection to the store's file: its
        # statements run in the calling thread (a sqlite3 connection belongs
        # to the thread that made it), in its transaction or in one begun here.
        if not isinstance(connection, sqlite3.Connection):
            raise InvalidRequest(
                "transaction() takes a sqlite3.Connection to the store's file, "
                f"not {type(connection).__name__}"
            )
        began = ops.join(self._db, connection)
        tx = AsyncSqliteTransaction(self, _HookHandle(connection), runner=_INLINE)
        try:
            yield tx
        except BaseException:
            if began:
                ops.leave(self._db, connection, commit=False)
            raise
        if began:
            ops.leave(self._db, connection, commit=True)

    async def _in_transaction(self, tx: AsyncTransaction, fn: Any, *args: Any) -> Any:
        """``fn(db, handle, *args)`` in the open transaction ``tx``, on its thread."""
        if not isinstance(tx, (AsyncSqliteTransaction, AsyncHookTransaction)):
            raise InvalidRequest("a transaction of another store was given to this one")
        if isinstance(tx, AsyncHookTransaction):  # inside an append: on its thread already
            return fn(self._db, _HookHandle(tx.connection), *args)
        return await tx._run(fn, self._db, tx._handle, *args)

    async def _append(
        self, stream: str, batch: list[EncodedEvent], expected: Expected
    ) -> AppendResult:
        self._turn.check()
        inline = self._call_inline if self._inline else None
        return await self._run(ops.append, self._db, stream, batch, expected, inline)

    async def _append_many(
        self, appends: list[tuple[str, list[EncodedEvent], Expected]]
    ) -> list[AppendResult]:
        self._turn.check()
        inline = self._call_inline if self._inline else None
        return await self._run(ops.append_many, self._db, appends, inline)

    async def _read_page(
        self, stream: str, cursor: int, backwards: bool, count: int
    ) -> Sequence[Row]:
        return await self._run(ops.read_page, self._db, stream, cursor, backwards, count)

    async def _read_all_page(
        self, after: int, types: list[str] | None, prefix: str | None, count: int
    ) -> Sequence[Row]:
        return await self._run(ops.read_all_page, self._db, after, types, prefix, count)

    async def _get_stream(self, stream: str) -> StreamInfo | None:
        info = await self._run(ops.stream_info, self._db, stream)
        return stream_info_from(self.serializer, stream, *info)

    async def _set_stream_metadata(self, stream: str, metadata: bytes | None) -> None:
        await self._run(ops.set_stream_metadata, self._db, stream, metadata)

    async def _last_position(self) -> int:
        return await self._run(ops.last_position, self._db)

    @asynccontextmanager  # unasync: @contextmanager
    async def _follow(self) -> AsyncIterator[Wait]:
        # Polls like the default (backing off from 1 ms to 50 ms), on the store's
        # thread: a commit to the file from this process ends a pause at once.
        # In slices of STOP_CHECK: a cancelled wait holds the thread no longer.
        async def wait(after: int, timeout: float) -> bool:
            start: list[int | None] = [None]
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                seconds = max(min(STOP_CHECK, remaining), 0.0)
                if await self._run(checkpoint_ops.has_news, self._db, after, seconds, start):
                    return True
                if remaining <= STOP_CHECK:
                    return False

        yield wait

    async def _close(self) -> None:
        # The database first: running reads are interrupted and end with
        # StoreClosed, running writes finish; then the worker threads stop.
        await asyncio.to_thread(self._db.close)  # unasync: self._db.close()
        self._runner.close()
        self._tx_runner.close()

    async def _find_event(self, event_id: bytes) -> Row | None:
        return await self._run(ops.find_event, self._db, event_id)

    async def _delete_stream(self, stream: str, hard: bool, by: str, reason: str) -> None:
        await self._run(ops.delete_stream, self._db, stream, hard, by, reason)

    async def _restore_stream(self, stream: str) -> None:
        await self._run(ops.restore_stream, self._db, stream)

    async def _truncate_stream(self, stream: str, before: int, by: str, reason: str) -> int:
        return await self._run(ops.truncate_stream, self._db, stream, before, by, reason)

    async def _save_snapshot(
        self, stream: str, version: int, state_type: str, schema_version: int, data: bytes
    ) -> None:
        await self._run(
            ops.save_snapshot, self._db, stream, version, state_type, schema_version, data
        )

    async def _load_snapshot(self, stream: str, max_version: int) -> Snapshot | None:
        row = await self._run(ops.load_snapshot, self._db, stream, max_version)
        return None if row is None else snapshot_from_row(stream, row)

    async def _list_snapshots(self, stream: str) -> list[Snapshot]:
        rows = await self._run(ops.list_snapshots, self._db, stream)
        return [snapshot_from_row(stream, row) for row in rows]

    async def _delete_snapshots(
        self, stream: str | None, state_type: str | None, keep_schema_version: int | None
    ) -> int:
        return await self._run(
            ops.delete_snapshots, self._db, stream, state_type, keep_schema_version
        )


def _nothing() -> None:
    return None


#: Whether a transaction of the store may send BEGIN with its first statement (async:
#: its thread's connection is known; sync: each thread has its own, begun at once).
_LAZY_BEGIN = True  # unasync: _LAZY_BEGIN = False


class AsyncSqliteTransaction:
    """A transaction of the SQLite store (see ``AsyncStoreBase.transaction``).

    ``connection`` is the sqlite3 connection inside it. Run statements with
    ``execute``: it runs them on the transaction's own thread (the async
    flavour keeps one for transactions, as a sqlite3 transaction must stay
    on one thread).
    """

    def __init__(
        self, store: AsyncSqliteEventStore, handle: Any, *, runner: Any = None, begun: bool = True
    ) -> None:
        self._store = store
        self._handle = handle
        self._conn = handle.conn
        self._runner = store._tx_runner if runner is None else runner
        #: Whether BEGIN was sent (else it goes with the first statement). Set on
        #: the transaction's thread: read it there (_finish), where calls run in order.
        self._begun = begun
        self._sent = begun  # whether anything was sent to the thread
        self._ended = False

    def _end(self) -> bool:
        """The block is over (nothing begins now); whether anything may need ending."""
        self._ended = True
        return self._sent

    def _finish(self, commit: bool) -> None:
        """On the transaction's thread, after every call sent: COMMIT or ROLLBACK if begun
        (a call whose task was cancelled may still have begun it)."""
        if self._begun:
            self._store._db.end_write(self._handle, commit)

    @property
    def connection(self) -> Any:
        """The sqlite3 connection inside the transaction."""
        if not self._begun and not self._ended:
            # The caller reaches for the connection itself: BEGIN now, on the
            # transaction's thread (idle: the caller holds the turn), waiting here.
            self._sent = True
            self._runner.call(self._begin_then, _nothing)
        return self._conn

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the transaction's thread, after BEGIN if not sent yet."""
        if self._ended:
            raise InvalidRequest("this transaction has ended: open a new one")
        if self._begun:
            return await self._runner.run(fn, *args)
        self._sent = True
        return await self._runner.run(self._begin_then, fn, *args)

    def _begin_then(self, fn: Callable[..., T], *args: Any) -> T:
        self._store._db.begin_write("a transaction", self._handle)
        self._begun = True
        return fn(*args)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run ``sql`` (``?`` placeholders) in the transaction."""
        return await self._run(self._store._db.execute_in, self._handle, sql, params)

    async def append(
        self, stream: str, events: Sequence[object], *, expected: Expected = ANY
    ) -> AppendResult:
        """Append in this transaction: visible, and final, once it commits."""
        store = self._store
        stream, batch, expected = store._checked_append(stream, events, expected)
        inline = store._call_inline if store._inline else None
        return await self._run(
            ops.append_in, store._db, self._handle, stream, batch, expected, inline
        )


class _HookHandle:
    """What the checkpoint operations need of an append's transaction: its connection."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
