"""Whose turn it is to hold a transaction of the async SQLite store, among tasks.

The async flavour runs every caller-driven transaction (``store.transaction()``,
a projection's batch) on one thread, as a sqlite3 transaction must stay on
the thread that began it. Tasks of one event loop therefore take turns: a
second task waits here (at most ``busy_timeout``, then StoreTimeout naming
the holder), as a second thread of the sync flavour waits for the write
lock. A task that writes again from inside its own transaction (a nested
``transaction()``, an ``append`` from a projection handler) is refused at
once: it would wait for itself.

The sync flavour needs none of this (each thread has its own connection):
its :class:`Turn` does nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext

from eventfold.errors import StoreError, StoreTimeout

__all__ = ["AsyncTurn", "Turn"]


def _waits_for_itself(path: str) -> StoreError:
    return StoreError(
        f"this task already holds a transaction of {path!r}: a write inside it (such as "
        "an append from a projection handler) would wait for itself; write through the "
        "transaction (ctx.execute, ctx.transaction.append) instead"
    )


_NOTHING: AbstractContextManager[None] = nullcontext()


class Turn:
    """The sync flavour's turn: nothing to wait for."""

    def __init__(self, path: str, timeout: float) -> None:
        del path, timeout

    def __call__(self) -> AbstractContextManager[None]:
        return _NOTHING

    def check(self) -> None:
        """Nothing: the write lock refuses a thread's own nested write."""


class AsyncTurn:
    """One transaction at a time among the tasks of a store (see the module docstring)."""

    def __init__(self, path: str, timeout: float) -> None:
        self._path = path
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._holder: asyncio.Task[object] | None = None
        self._since = 0.0

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        self.check()
        if self._lock.locked():
            try:
                async with asyncio.timeout(self._timeout):
                    await self._lock.acquire()
            except TimeoutError:
                raise StoreTimeout(
                    f"SQLite database {self._path!r}: waited {self._timeout:g} s "
                    f"(busy_timeout) for a transaction another task of this process has "
                    f"held for {time.monotonic() - self._since:.1f} s ({self._holder_name()}: "
                    "a long transaction, such as a slow projection handler); retry, or "
                    "raise busy_timeout"
                ) from None
        else:
            await self._lock.acquire()
        self._holder, self._since = asyncio.current_task(), time.monotonic()
        try:
            yield
        finally:
            self._holder = None
            self._lock.release()

    def check(self) -> None:
        """Refuse a write of the task that holds the turn: it would wait for itself."""
        if self._holder is not None and self._holder is asyncio.current_task():
            raise _waits_for_itself(self._path)

    def _holder_name(self) -> str:
        holder = self._holder
        return f"task {holder.get_name()!r}" if holder is not None else "a task"
