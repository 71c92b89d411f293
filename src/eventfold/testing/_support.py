"""Helpers the conformance suites share, in both flavours.

Written by hand rather than generated: the two flavours of
:func:`within_seconds` differ in kind (a thread, a task), and the generator
maps each ``async_`` name to its sync twin here.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

__all__ = [
    "alongside",
    "async_alongside",
    "async_collect",
    "async_fetchall",
    "async_within_seconds",
    "collect",
    "fetchall",
    "within_seconds",
]

T = TypeVar("T")
U = TypeVar("U")


async def async_collect(items: AsyncIterator[T]) -> list[T]:
    """All items of an async iterator, as a list."""
    return [item async for item in items]


def collect(items: Iterator[T]) -> list[T]:
    """All items of an iterator, as a list."""
    return list(items)


async def async_fetchall(cursor: Any) -> list[Any]:
    """The rows of a driver cursor from an async store's transaction: psycopg's async
    cursor fetches with await, sqlite3's (the async SQLite store's) at once."""
    rows = cursor.fetchall()
    if inspect.isawaitable(rows):
        rows = await rows
    return list(rows)


def fetchall(cursor: Any) -> list[Any]:
    """The rows of a driver cursor, as a list."""
    return list(cursor.fetchall())


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


async def async_alongside(
    waiting: Callable[[], Awaitable[T]], acting: Callable[[], Awaitable[U]]
) -> tuple[T, U]:
    """Run ``waiting()`` and ``acting()`` concurrently (two tasks); both results."""
    first, second = await asyncio.gather(waiting(), acting())
    return first, second


def alongside(waiting: Callable[[], T], acting: Callable[[], U]) -> tuple[T, U]:
    """Run ``waiting()`` on a thread while ``acting()`` runs here; both results."""
    results: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(waiting())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="eventfold-alongside", daemon=True)
    thread.start()
    try:
        acted = acting()
    finally:
        thread.join(60)
    if thread.is_alive():
        raise AssertionError("still waiting 60 s after the action")
    if errors:
        raise errors[0]
    return results[0], acted
