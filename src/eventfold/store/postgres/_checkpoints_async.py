"""Checkpoints, leases and dead letters in the store's PostgreSQL schema.

They live in the store's schema (schema version 3). Positions exceed bigint,
so they are stored as ``numeric`` and passed as text. Lease times come from
the database clock, so runners on different machines agree on when a lease
has run out. A runner's wait for news LISTENs on the store's channel.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, aclosing
from datetime import datetime
from typing import TYPE_CHECKING, Any

from eventfold._checks import check_wait
from eventfold._clock import us_to_datetime
from eventfold.errors import CheckpointRegression, ConfigurationError, InvalidRequest
from eventfold.events import RecordedEvent
from eventfold.store._checkpoints_async import (
    AsyncTransaction,
    Stop,
    async_wait_for_checkpoint,
    async_wait_in_slices,
)
from eventfold.store._local import LocalPositions
from eventfold.store._rows import dead_letters_from_rows, decode_rows_lenient
from eventfold.store._types import Checkpoint, DeadLetter, Holdup
from eventfold.store.postgres._errors import translate_errors
from eventfold.store.postgres._statements import split_position

if TYPE_CHECKING:
    from eventfold.store.postgres._store_async import AsyncPostgresEventStore

__all__ = ["AsyncPostgresCheckpoints"]


class AsyncPostgresCheckpoints:
    """Checkpoints, leases, dead letters and aliases in the store's PostgreSQL schema."""

    transactional = True

    def __init__(self, store: AsyncPostgresEventStore) -> None:
        self._store = store
        self._sql = store._sql
        self._errors = translate_errors(store.schema)
        self._listener: Any = None
        #: Where this process's runners moved their checkpoints (waits use it first).
        self.local_positions = LocalPositions()

    def transaction(self) -> AbstractAsyncContextManager[AsyncTransaction]:
        # Pipeline mode sends a batch's statements without waiting for each
        # answer: one round trip per batch instead of one per event. An error
        # then surfaces at the end of the batch, which a runner handles by
        # redoing the batch event by event.
        return self._store._transaction(pipeline=True, claim=False)

    async def _one(self, name: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        with self._errors:
            async with self._store._connection() as conn:
                cursor = await conn.execute(self._sql[name], params)
                row = await cursor.fetchone()
        return None if row is None else tuple(row)

    @staticmethod
    def _conn(tx: AsyncTransaction) -> Any:
        if tx.connection is None:
            raise InvalidRequest("a transaction of another store was given to this one")
        return tx.connection

    async def get(self, name: str) -> Checkpoint | None:
        row = await self._one("checkpoint_get", {"name": name})
        return None if row is None else Checkpoint(int(row[0]), row[1], int(row[2] or 0))

    async def names(self) -> list[str]:
        with self._errors:
            async with self._store._connection() as conn:
                cursor = await conn.execute(self._sql["checkpoint_list"])
                return [row[0] for row in await cursor.fetchall()]

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        row = await self._one("checkpoint_acquire", {"name": name, "owner": owner, "ttl": ttl})
        return row is not None and row[0] == owner

    async def release(self, name: str, owner: str) -> None:
        with self._errors:
            async with self._store._connection() as conn:
                await conn.execute(self._sql["checkpoint_release"], {"name": name, "owner": owner})

    async def owns(self, name: str, owner: str) -> bool:
        checkpoint = await self.get(name)
        return checkpoint is not None and checkpoint.owner == owner

    async def advance(
        self, tx: AsyncTransaction, name: str, position: int, owner: str, ttl: float
    ) -> bool:
        conn = self._conn(tx)
        params = {"name": name, "position": str(position), "owner": owner, "ttl": ttl}
        cursor = await conn.execute(self._sql["checkpoint_advance"], params)
        if await cursor.fetchone() is not None:
            return True
        cursor = await conn.execute(self._sql["checkpoint_get"], {"name": name})
        row = await cursor.fetchone()
        if row is None or row[1] != owner:
            return False  # the lease is not ours (any more)
        raise CheckpointRegression(name, int(row[0]), position)

    async def reset(self, tx: AsyncTransaction, name: str, owner: str) -> bool:
        conn = self._conn(tx)
        cursor = await conn.execute(self._sql["checkpoint_reset"], {"name": name, "owner": owner})
        if await cursor.fetchone() is None:
            return False
        await conn.execute(self._sql["dead_letter_clear"], {"name": name})
        return True

    async def dead_letter(
        self, tx: AsyncTransaction, name: str, event: RecordedEvent, error: str
    ) -> None:
        params = {
            "name": name,
            "position": str(event.position),
            "event_id": event.id,
            "stream": event.stream,
            "version": event.version,
            "type": event.type,
            "error": error,
        }
        await self._conn(tx).execute(self._sql["dead_letter_add"], params)

    async def dead_letters(self, name: str) -> list[DeadLetter]:
        with self._errors:
            async with self._store._connection() as conn:
                cursor = await conn.execute(self._sql["dead_letter_list"], {"name": name})
                rows = await cursor.fetchall()
        return dead_letters_from_rows(rows)

    async def backlog(self, after: int) -> tuple[int, datetime | None]:
        tx, seq = split_position(after)
        row = await self._one("count_after", {"tx": str(tx), "seq": seq})
        if row is None:
            return 0, None
        return int(row[0]), (us_to_datetime(row[1]) if row[1] is not None else None)

    async def holdups(self) -> list[Holdup]:
        return await self._store.holdups()

    async def wait(self, after: int, timeout: float, stop: Stop) -> None:
        with self._errors:
            listener, fresh = await self._listen()
            # A commit after LISTEN is announced. Only a new listener can have
            # missed one (made after the run's last read, before LISTEN): check
            # the log then, not on every wait (a query per wake saved).
            if fresh and await self._store.last_position() > after:
                return

            async def notified(seconds: float) -> bool:
                async with aclosing(listener.notifies(timeout=seconds, stop_after=1)) as notifies:
                    return await anext(notifies, None) is not None

            await async_wait_in_slices(stop, timeout, notified)

    async def wait_for(self, name: str, position: int, timeout: float) -> int:
        # On a connection of the pool, LISTENing for checkpoints that move (each
        # advance notifies at commit), looked at again after each notification.
        # LISTEN and the first look share a round trip (a pipeline): a move
        # after the LISTEN is announced, one before it is seen by the look.
        check_wait(name, position, timeout)
        # A runner of this store holding the lease says when it has passed: no round trip.
        deadline = time.monotonic() + timeout
        found = await self.local_positions.async_wait(name, position, timeout)
        if found is not None:
            return found
        timeout = max(deadline - time.monotonic(), 0.0)
        params = {"name": name}
        with self._errors:
            async with self._store._connection() as conn:
                async with conn.pipeline() as pipeline:
                    await conn.execute(self._sql["listen_checkpoints"])
                    first = await conn.execute(self._sql["checkpoint_wait"], params)
                    await pipeline.sync()
                looks = [await first.fetchone()]
                target = [name]  # the consumer `name` is, or points at (an alias)
                try:

                    async def reached() -> int:
                        if looks:
                            row = looks.pop()
                        else:
                            cursor = await conn.execute(self._sql["checkpoint_wait"], params)
                            row = await cursor.fetchone()
                        if row is None:
                            return 0
                        target[0] = row[1]
                        return int(row[0])

                    async def changed(seconds: float) -> int | None:
                        # The payload is "<position> <name>": the awaited consumer's own
                        # move needs no look. Not through an alias: it may have been
                        # switched since the last look (the next look sees where to).
                        notifies = conn.notifies(timeout=seconds, stop_after=1)
                        async with aclosing(notifies):
                            notify = await anext(notifies, None)
                        if notify is None:
                            return None
                        moved, _, mover = notify.payload.partition(" ")
                        direct = mover == target[0] == name
                        return int(moved) if direct and moved.isdigit() else None

                    notified = changed if self._store._notify else None
                    return await async_wait_for_checkpoint(
                        name, position, timeout, reached, notified
                    )
                finally:
                    if not conn.broken:
                        await conn.execute(self._sql["unlisten_checkpoints"])

    async def _listen(self) -> tuple[Any, bool]:
        """The LISTENing connection, and whether it was (re)opened just now."""
        listener = self._listener
        if listener is not None and not listener.closed and not listener.broken:
            return listener, False
        if self._store._conninfo is None:
            raise ConfigurationError(
                "following a PostgreSQL store live needs a pool whose conninfo is a string"
            )
        # Set up like the store's own connections (connect timeout, keepalives,
        # tcp_user_timeout): a reconnect through a dead network fails in bounded time.
        listener = await self._store._connect()
        listener.stall_timeout = None  # waiting for notifications is not a stall
        self._listener = listener
        await listener.execute(self._sql["listen"])
        return listener, True

    async def pages(
        self,
        after: int,
        types: list[str] | None,
        prefix: str | None,
        size: int,
        *,
        read_ahead: bool = False,
    ) -> AsyncGenerator[list[RecordedEvent], None]:
        serializer = self._store.serializer
        pages = self._store._log_pages(after, types, prefix, size, read_ahead=read_ahead)
        async with aclosing(pages):  # a streamed read gives its connection back at once
            async for page in pages:
                yield decode_rows_lenient(serializer, page)

    async def pages_with_head(
        self,
        after: int,
        types: list[str] | None,
        prefix: str | None,
        size: int,
        *,
        read_ahead: bool = False,
    ) -> AsyncIterator[tuple[list[RecordedEvent], int]]:
        # Each read says how far it got, filters or not: no round trip for the
        # log's head before the first page (a live runner's wake is one less).
        serializer, store = self._store.serializer, self._store
        if read_ahead:
            # A backlog streams (see pages): the head is read first.
            head = await store.last_position()
            async with aclosing(self.pages(after, types, prefix, size, read_ahead=True)) as pages:
                async for page in pages:
                    yield page, head
            yield [], head
            return
        while True:
            rows, reach = await store._read_all_page_reach(after, types, prefix, size)
            yield decode_rows_lenient(serializer, rows), reach
            if len(rows) < size:
                return
            after = reach

    async def set_alias(self, alias: str, target: str) -> None:
        with self._errors:
            async with self._store._connection() as conn:
                await conn.execute(self._sql["alias_set"], {"alias": alias, "target": target})

    async def get_alias(self, alias: str) -> str | None:
        row = await self._one("alias_get", {"alias": alias})
        return None if row is None else str(row[0])

    async def close(self) -> None:
        """Close the LISTEN connection."""
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
