"""Checkpoints beside a memory store, in process memory (nothing is rolled back)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from eventfold._acompat import AsyncOffload
from eventfold._clock import us_to_datetime
from eventfold.events import RecordedEvent
from eventfold.store._checkpoints_async import (
    AsyncProcessCheckpoints,
    Stop,
    async_wait_in_slices,
)
from eventfold.store._rows import DATA, METADATA, POSITION, SCHEMA_VERSION, decode_rows_lenient
from eventfold.store._types import DeadLetter

if TYPE_CHECKING:
    from eventfold.store.memory._store_async import AsyncMemoryEventStore

__all__ = ["AsyncMemoryCheckpoints"]


class AsyncMemoryCheckpoints(AsyncProcessCheckpoints):
    """In-process checkpoints that read the memory store's log directly."""

    def __init__(self, store: AsyncMemoryEventStore) -> None:
        super().__init__(store)
        self._memory = store

    async def _stored(self, letter: DeadLetter) -> dict[str, Any]:
        row = self._memory._row_at(letter.position)
        if row is None:
            return {}
        return {"schema_version": row[SCHEMA_VERSION], "data": row[DATA], "metadata": row[METADATA]}

    async def backlog(self, after: int) -> tuple[int, datetime | None]:
        # Counted from the stored rows: an event that cannot be decoded counts too.
        count, oldest = self._memory._backlog(after)
        return count, (us_to_datetime(oldest) if oldest is not None else None)

    async def wait(self, after: int, timeout: float, stop: Stop) -> None:
        block = self._memory._wait_for_append

        async def step(seconds: float) -> bool:
            # A threading condition, notified by appends from any thread or loop.
            return await AsyncOffload.call(block, after, seconds)

        await async_wait_in_slices(stop, timeout, step)

    async def pages(
        self,
        after: int,
        types: list[str] | None,
        prefix: str | None,
        size: int,
        *,
        read_ahead: bool = False,
    ) -> AsyncIterator[list[RecordedEvent]]:
        serializer = self._memory.serializer
        while page := await self._memory._read_all_page(after, types, prefix, size):
            yield decode_rows_lenient(serializer, page)
            if len(page) < size:
                return
            after = page[-1][POSITION]
