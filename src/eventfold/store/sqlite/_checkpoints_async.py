"""Checkpoints in the SQLite file, next to the events (schema version 3).

A read model written through a transaction of the store commits together
with the checkpoint that says how far it got. Lease times are this
machine's clock: processes sharing one file share that clock.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, aclosing
from datetime import datetime
from typing import TYPE_CHECKING, Any

from eventfold._acompat import AsyncAhead
from eventfold._checks import check_wait
from eventfold.events import RecordedEvent
from eventfold.store._base_async import AsyncStoreBase
from eventfold.store._checkpoints_async import (
    AsyncTransaction,
    Stop,
    async_poll_checkpoint,
    async_wait_in_slices,
)
from eventfold.store._local import LocalPositions
from eventfold.store._rows import POSITION, decode_rows_lenient
from eventfold.store._types import Checkpoint, DeadLetter, Holdup
from eventfold.store.sqlite import _checkpoint_ops as ops
from eventfold.store.sqlite import _event_ops as event_ops

if TYPE_CHECKING:
    from eventfold.store.sqlite._store_async import AsyncSqliteEventStore

__all__ = ["AsyncSqliteCheckpoints"]

#: Whether reading ahead overlaps the consumer's work (a task; not in the sync flavour).
_OVERLAPS = True  # unasync: _OVERLAPS = False
#: Pages read per trip to the store's thread when reading ahead.
_PAGES_PER_TRIP = 4


class AsyncSqliteCheckpoints:
    """Checkpoints, leases, dead letters and aliases in the store's SQLite file."""

    transactional = True

    def __init__(self, store: AsyncSqliteEventStore) -> None:
        self._store = store
        self._db = store._db
        self._run = store._runner.run
        #: Where this process's runners moved their checkpoints (waits use it first).
        self.local_positions = LocalPositions()

    def transaction(self) -> AbstractAsyncContextManager[AsyncTransaction]:
        return self._store.transaction()

    async def get(self, name: str) -> Checkpoint | None:
        return await self._run(ops.get, self._db, name)

    async def names(self) -> list[str]:
        return await self._run(ops.names, self._db)

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        return await self._run(ops.acquire, self._db, name, owner, ttl)

    async def release(self, name: str, owner: str) -> None:
        await self._run(ops.release, self._db, name, owner)

    async def owns(self, name: str, owner: str) -> bool:
        checkpoint = await self.get(name)
        return checkpoint is not None and checkpoint.owner == owner

    async def advance(
        self, tx: AsyncTransaction, name: str, position: int, owner: str, ttl: float
    ) -> bool:
        return bool(await self._in(tx, ops.advance, name, position, owner, ttl))

    async def reset(self, tx: AsyncTransaction, name: str, owner: str) -> bool:
        return bool(await self._in(tx, ops.reset, name, owner))

    async def dead_letter(
        self, tx: AsyncTransaction, name: str, event: RecordedEvent, error: str
    ) -> None:
        await self._in(tx, ops.dead_letter, name, event, error)

    async def _in(self, tx: AsyncTransaction, fn: Any, *args: Any) -> Any:
        """Run ``fn(db, handle, *args)`` in the store transaction ``tx`` (on its thread)."""
        return await self._store._in_transaction(tx, fn, *args)

    async def dead_letters(self, name: str) -> list[DeadLetter]:
        return await self._run(ops.dead_letters, self._db, name)

    async def backlog(self, after: int) -> tuple[int, datetime | None]:
        return await self._run(ops.backlog, self._db, after)

    async def holdups(self) -> list[Holdup]:
        return []  # WAL readers see every commit at once: nothing holds them back

    async def wait(self, after: int, timeout: float, stop: Stop) -> None:
        start: list[int | None] = [None]

        async def step(seconds: float) -> bool:
            return await self._run(ops.has_news, self._db, after, seconds, start)

        await async_wait_in_slices(stop, timeout, step)

    async def wait_for(self, name: str, position: int, timeout: float) -> int:
        # A runner of this store holding the lease says when it has passed; else
        # a poll of the checkpoint is one indexed read, as cheap as SQLite's own
        # change signal (PRAGMA data_version, also a poll): poll it.
        check_wait(name, position, timeout)
        deadline = time.monotonic() + timeout
        found = await self.local_positions.async_wait(name, position, timeout)
        if found is not None:
            return found
        remaining = max(deadline - time.monotonic(), 0.0)
        return await async_poll_checkpoint(self, name, position, remaining)

    async def pages(
        self,
        after: int,
        types: list[str] | None,
        prefix: str | None,
        size: int,
        *,
        read_ahead: bool = False,
    ) -> AsyncIterator[list[RecordedEvent]]:
        # SQLite reads are local and cheap: page by page. With ``read_ahead``
        # the async flavour reads several pages per trip to its thread (a trip
        # costs more than a page's handling saves), the next trip's while the
        # consumer handles these (the sync flavour has nothing to overlap).
        chunk = size * _PAGES_PER_TRIP if read_ahead and _OVERLAPS else size
        rows = list(await self._store._read_all_page(after, types, prefix, chunk))
        async with aclosing(self._pages_from(rows, types, prefix, size, chunk)) as pages:
            async for page in pages:
                yield page

    async def pages_with_head(
        self,
        after: int,
        types: list[str] | None,
        prefix: str | None,
        size: int,
        *,
        read_ahead: bool = False,
    ) -> AsyncIterator[tuple[list[RecordedEvent], int]]:
        # The log's head and the first page in one trip to the store's thread:
        # a live runner's wake costs one trip, not two.
        chunk = size * _PAGES_PER_TRIP if read_ahead and _OVERLAPS else size
        head, rows = await self._run(event_ops.head_and_page, self._db, after, types, prefix, chunk)
        async with aclosing(self._pages_from(rows, types, prefix, size, chunk)) as pages:
            async for page in pages:
                yield page, head
        yield [], head

    async def _pages_from(
        self,
        rows: list[Any],
        types: list[str] | None,
        prefix: str | None,
        size: int,
        chunk: int,
    ) -> AsyncGenerator[list[RecordedEvent], None]:
        """Pages of ``size`` from ``rows`` (a read of ``chunk``), then on to the log's end."""
        store: AsyncStoreBase = self._store
        serializer, read = store.serializer, self._store._read_all_page
        ahead = None
        try:
            while rows:
                full = len(rows) == chunk
                if full and chunk > size:
                    ahead = AsyncAhead.start(read(rows[-1][POSITION], types, prefix, chunk))
                for start in range(0, len(rows), size):
                    yield decode_rows_lenient(serializer, rows[start : start + size])
                if not full:
                    return
                if ahead is not None:
                    rows, ahead = list(await ahead), None
                else:
                    rows = list(await read(rows[-1][POSITION], types, prefix, chunk))
        finally:
            if ahead is not None:
                await AsyncAhead.cancel(ahead)

    async def set_alias(self, alias: str, target: str) -> None:
        await self._run(ops.set_alias, self._db, alias, target)

    async def get_alias(self, alias: str) -> str | None:
        return await self._run(ops.get_alias, self._db, alias)

    async def close(self) -> None:
        return None
