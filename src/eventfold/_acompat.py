"""How store code runs blocking driver calls in each flavour.

The async sources call ``await self._runner.run(fn, *args)``; the generated
sync code calls ``self._runner.run(fn, *args)`` on a :class:`Runner`, which
simply calls ``fn``. Only drivers without native asyncio (sqlite3) need this:
their transaction bodies are plain functions shared by both flavours.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Runner:
    """Runs a blocking function in the calling thread."""

    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)``."""
        return fn(*args, **kwargs)

    def close(self) -> None:
        """Nothing to release."""


class AsyncInlineRunner:
    """Runs a blocking function in the calling thread, also for the async flavour.

    For a sqlite3 connection the application made: it belongs to the
    application's thread, so its statements run there.
    """

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)``, blocking the caller."""
        return fn(*args, **kwargs)


#: The sync twin of AsyncInlineRunner: the sync Runner runs in the calling thread already.
InlineRunner = Runner


class AsyncRunner:
    """Runs blocking functions on a small private thread pool."""

    def __init__(self, max_workers: int = 4) -> None:
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="eventfold")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` run on a worker thread."""
        loop = asyncio.get_running_loop()
        if kwargs:
            return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        return await loop.run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """Stop the worker threads once running calls finish."""
        self._executor.shutdown(wait=True)


class Clock:
    """Blocking sleep and waits for the sync flavour."""

    sleep = staticmethod(time.sleep)

    @staticmethod
    def wait(event: threading.Event, seconds: float) -> bool:
        """Wait up to ``seconds`` for ``event``; whether it is set."""
        return event.wait(seconds)


class AsyncClock:
    """Non-blocking sleep and waits for the async flavour."""

    sleep = staticmethod(asyncio.sleep)

    @staticmethod
    async def wait(event: asyncio.Event, seconds: float) -> bool:
        """Await ``event`` for up to ``seconds`` (no task is left behind); whether it is set."""
        if event.is_set():
            return True
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
        except TimeoutError:
            return event.is_set()
        return True


class Ahead:
    """Work started before it is needed: the sync flavour simply does it now."""

    @staticmethod
    def start(value: T) -> T:
        """``value``, already computed by the caller."""
        return value

    @staticmethod
    def cancel(value: object) -> None:
        """Nothing runs: nothing to cancel."""


class AsyncAhead:
    """Work started before it is needed (a read of the next page while one is handled)."""

    @staticmethod
    def start(work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``work`` as a task now; await the task when its result is needed."""
        return asyncio.ensure_future(work)

    @staticmethod
    async def cancel(task: asyncio.Task[Any]) -> None:
        """Cancel ``task`` if it still runs and wait for it: no task is left behind."""
        if task.done():
            if not task.cancelled():
                task.exception()  # retrieved: never "exception was never retrieved"
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():  # the caller itself is being cancelled
                raise
        except Exception:
            pass


class Offload:
    """Run a blocking call: in the calling thread for the sync flavour."""

    @staticmethod
    def call(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)``."""
        return fn(*args, **kwargs)


class AsyncOffload:
    """Run a blocking call on a worker thread for the async flavour."""

    @staticmethod
    async def call(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` run on a worker thread."""
        return await asyncio.to_thread(fn, *args, **kwargs)


#: A poll for news backs off from FIRST_POLL to LAST_POLL seconds between tries.
FIRST_POLL = 0.001
LAST_POLL = 0.05


def next_poll(pause: float, cap: float = LAST_POLL) -> float:
    """The pause after ``pause`` in a backed-off poll: doubled, at most ``cap``."""
    return min(pause * 2, cap)
