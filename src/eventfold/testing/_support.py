"""Helpers the conformance suites share, in both flavours.

Written by hand rather than generated: the two flavours of
:func:`within_seconds` differ in kind (a thread, a task), and the generator
maps each ``async_`` name to its sync twin here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

__all__ = ["async_collect", "async_within_seconds", "collect", "within_seconds"]

T = TypeVar("T")


async def async_collect(items: AsyncIterator[T]) -> list[T]:
    """All items of an async iterator, as a list."""
    return [item async for item in items]


def collect(items: Iterator[T]) -> list[T]:
    """All items of an iterator, as a list."""
    return list(items)


async def async_within_seconds(seconds: float, fn: Callable[[], Awaitable[T]]) -> T:
    """Await ``fn()``; fail the test if it has not finished after ``seconds``."""
    try:
        return await asyncio.wait_for(fn(), seconds)
    except TimeoutError:
        raise AssertionError(f"still running after {seconds} s") from None


def within_seconds(seconds: float, fn: Callable[[], T]) -> T:
    """Call ``fn()`` on a thread; fail the test if it has not returned after ``seconds``.

    The thread is a daemon: a call that never returns is left behind, reported.
    """
    results: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="eventfold-within-seconds", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise AssertionError(f"still running after {seconds} s")
    if errors:
        raise errors[0]
    return results[0]
