"""How store code runs blocking driver calls in each flavour.

The async sources call ``await self._runner.run(fn, *args)``; the generated
sync code calls ``self._runner.run(fn, *args)`` on a :class:`Runner`, which
simply calls ``fn``. Only drivers without native asyncio (sqlite3) need this:
their transaction bodies are plain functions shared by both flavours.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Runner:
    """Runs a blocking function in the calling thread."""

    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)``."""
        return fn(*args, **kwargs)

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` (the twin of :meth:`AsyncRunner.call`)."""
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

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)``."""
        return fn(*args, **kwargs)


#: The sync twin of AsyncInlineRunner: the sync Runner runs in the calling thread already.
InlineRunner = Runner


class AsyncRunner:
    """Runs blocking functions on a small private pool of threads.

    Lighter than an executor's ``run_in_executor`` (a queue, and the result
    handed back with ``call_soon_threadsafe``): a SQLite store's every read
    is one trip through it. Threads start as calls need them, up to
    ``max_workers``; a call whose awaiting task was cancelled before it
    started is not run.
    """

    def __init__(self, max_workers: int = 4) -> None:
        self._max_workers = max_workers
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a call
        self._lock = threading.Lock()
        self._closed = False

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` run on a worker thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._submit((loop, future, fn, args, kwargs))
        return await future

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on a worker thread and block until it returns.

        For what must happen on a worker's thread (a connection that belongs
        to it) at a point where the caller cannot await.
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._submit((None, future, fn, args, kwargs))
        return future.result()

    def _submit(self, call: _Call) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot run a call after close()")
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self._max_workers:
                thread = threading.Thread(
                    target=self._work, name=f"eventfold-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            self._calls.put(call)

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            loop, future, fn, args, kwargs = call
            if not future.cancelled():  # its task gave up before it started
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # handed to the caller
                    _hand_back(loop, future, None, exc)
                else:
                    _hand_back(loop, future, result, None)
            with self._lock:
                self._idle += 1

    def close(self) -> None:
        """Stop the worker threads once running calls finish."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._calls.put(None)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join()


#: A call for a worker: the loop and future of its caller (no loop: a blocked
#: thread's future), the function, its arguments.
_Call = tuple[asyncio.AbstractEventLoop | None, Any, Callable[..., Any], Any, Any]


def _hand_back(
    loop: asyncio.AbstractEventLoop | None,
    future: Any,
    result: Any,
    error: BaseException | None,
) -> None:
    if loop is None:
        _settle(future, result, error)
        return
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody awaits the result
        loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: Any, result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


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
