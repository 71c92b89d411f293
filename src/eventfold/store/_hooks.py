"""Append hooks: work that runs inside every append's transaction.

A hook is called with the append's transaction and the events it wrote,
after they are written and before the transaction commits; if it raises, the
append is rolled back and nothing is stored. Inline projections
(``eventfold.projections.attach_inline``) are hooks. Keep them small: they
add to the latency of every append.

On the async stores a hook may be ``async def`` and gets an
:class:`AsyncHookTransaction` (``await tx.execute(...)``). On PostgreSQL it
is awaited on the append's connection. SQLite and the memory store run it
where the append runs (SQLite's transaction thread, the memory store's
lock), so it must finish without waiting for anything but ``tx.execute``:
one that waits (a sleep, a network call) fails the append with
InvalidRequest.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from eventfold.errors import InvalidRequest
from eventfold.events import RecordedEvent
from eventfold.store._types import ANY, AppendResult, Expected

__all__ = ["AppendHook", "AsyncAppendHook", "AsyncHookTransaction", "HookTransaction", "finish"]


class HookTransaction:
    """The append's transaction as a hook sees it: SQL yes, appends no.

    ``connection`` is the driver connection (None for the memory store);
    ``execute`` runs SQL with ``?`` placeholders through ``placeholder``.
    """

    def __init__(self, connection: Any, placeholder: str = "?") -> None:
        self.connection = connection
        self._placeholder = placeholder

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.connection is None:
            raise InvalidRequest("this store has no SQL database to run the hook's SQL in")
        if self._placeholder != "?":
            sql = sql.replace("?", self._placeholder)
        return self.connection.execute(sql, params)

    def append(
        self, stream: str, events: Sequence[object], *, expected: Expected = ANY
    ) -> AppendResult:
        raise InvalidRequest("an append hook cannot append: it runs inside an append")


class AsyncHookTransaction:
    """The append's transaction as a hook of an async store sees it: ``await execute``.

    ``connection`` is the driver connection (``psycopg.AsyncConnection`` on
    PostgreSQL, the transaction's ``sqlite3.Connection`` on SQLite, None for
    the memory store).
    """

    def __init__(self, connection: Any, placeholder: str = "?") -> None:
        self.connection = connection
        self._placeholder = placeholder

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.connection is None:
            raise InvalidRequest("this store has no SQL database to run the hook's SQL in")
        if self._placeholder != "?":
            sql = sql.replace("?", self._placeholder)
        result = self.connection.execute(sql, params)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def append(
        self, stream: str, events: Sequence[object], *, expected: Expected = ANY
    ) -> AppendResult:
        raise InvalidRequest("an append hook cannot append: it runs inside an append")


#: ``hook(transaction, events)``: called in every append's transaction.
AppendHook = Callable[[HookTransaction, list[RecordedEvent]], None]
#: ``hook(transaction, events)`` of an async store: plain or ``async def``.
AsyncAppendHook = Callable[[AsyncHookTransaction, list[RecordedEvent]], Awaitable[None] | None]

_WAITED = (
    "an append hook (inline projection) of this store waited for something other "
    "than its transaction's execute: it runs inside the append, where nothing else "
    "may be awaited (the append is rolled back)"
)


def finish(awaitable: Awaitable[Any]) -> None:
    """Run a hook's coroutine that must not wait to its end, without an event loop.

    SQLite's and the memory store's appends call hooks from a thread or under
    a lock: a coroutine that awaits only ``AsyncHookTransaction.execute`` (which
    then runs at once) ends at its first step; one that would wait is closed
    and InvalidRequest raised.
    """
    steps = awaitable.__await__()
    try:
        next(steps)
    except StopIteration:
        return
    except RuntimeError as exc:
        if "no running event loop" not in str(exc):
            raise
        raise InvalidRequest(_WAITED) from exc  # asyncio.sleep and the like, outside a loop
    close = getattr(steps, "close", None)
    if close is not None:
        close()
    raise InvalidRequest(_WAITED)
