"""SQLAlchemy 2: events in the session's transaction, read models in SQLAlchemy Core.

``pip install 'eventfold[sqlalchemy]'``. The store and the application share
one database (the SQLite file, or the PostgreSQL database of the store's
schema); eventfold joins the transaction the application's ``Session`` (or
``Connection``) has, so events commit, or roll back, with its other writes::

    with Session(engine) as session:
        session.add(Invoice(number="2026-17"))
        with eventfold.sqlalchemy.transaction(store, session) as tx:
            handler.handle("invoice-2026-17", Issue(), transaction=tx)
        session.commit()                    # the invoice row and its events, together

The asyncio flavour is :func:`async_transaction` (an ``AsyncSession`` on
``postgresql+psycopg``; SQLAlchemy's async SQLite driver is aiosqlite, whose
connection the SQLite store cannot join: use the sync flavour there).

A read model written through SQLAlchemy Core runs its statements in the
projection's transaction with :func:`execute`::

    def handle(ctx, event):
        execute(ctx, insert(totals).values(account=event.stream, n=1))
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from eventfold.errors import InvalidRequest
from eventfold.store import AsyncEventStore, AsyncTransaction, EventStore, Transaction

try:
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session
    from sqlalchemy.sql import ClauseElement
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "eventfold.sqlalchemy needs SQLAlchemy 2: pip install 'eventfold[sqlalchemy]'"
    ) from exc

__all__ = ["async_transaction", "execute", "transaction"]

_SQLITE = sqlite.dialect(paramstyle="qmark")
_POSTGRES = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]


def _driver_connection(connection: Connection) -> Any:
    return connection.connection.driver_connection


def _in_a_transaction(raw: Any) -> None:
    """Make sure the driver connection is inside the transaction SQLAlchemy will end.

    pysqlite (SQLAlchemy's default) begins only before a write, and psycopg
    at the first statement: begin now, so that what eventfold writes is in
    the transaction the session commits, never one eventfold ends itself.
    """
    if _driver(raw) == "sqlite3" and not raw.in_transaction:
        raw.execute("BEGIN IMMEDIATE")  # a writer: take the write lock now
    elif _idle_psycopg(raw):
        raw.execute("SELECT 1")  # psycopg begins the transaction with a statement


def _idle_psycopg(raw: Any) -> bool:
    """A psycopg connection outside autocommit with no transaction begun yet."""
    return _driver(raw) == "psycopg" and not raw.autocommit and raw.info.transaction_status == 0


@contextmanager
def transaction(store: EventStore, session: Session | Connection) -> Iterator[Transaction]:
    """``store.transaction()`` inside the transaction of ``session`` (a ``Session`` or a
    ``Connection`` on the store's database): committed or rolled back by it."""
    connection = session.connection() if isinstance(session, Session) else session
    raw = _driver_connection(connection)
    _in_a_transaction(raw)
    with store.transaction(raw) as tx:
        yield tx


@asynccontextmanager
async def async_transaction(
    store: AsyncEventStore, session: Any
) -> AsyncIterator[AsyncTransaction]:
    """:func:`transaction` for an ``AsyncSession`` or ``AsyncConnection`` (psycopg)."""
    from sqlalchemy.ext.asyncio import AsyncSession  # noqa: PLC0415 - needs greenlet

    connection = await session.connection() if isinstance(session, AsyncSession) else session
    raw: Any = (await connection.get_raw_connection()).driver_connection
    if _idle_psycopg(raw):
        await raw.execute("SELECT 1")
    async with store.transaction(raw) as tx:
        yield tx


def _driver(connection: Any) -> str:
    """``sqlite3`` or ``psycopg`` (the driver a connection class comes from), else ``""``."""
    for cls in type(connection).__mro__:
        for driver in ("sqlite3", "psycopg"):
            if cls.__module__.startswith(driver):
                return driver
    return ""


def _compiled(connection: Any, statement: ClauseElement) -> tuple[str, Any]:
    module = _driver(connection)
    if module == "sqlite3":
        compiled = statement.compile(dialect=_SQLITE, compile_kwargs={"render_postcompile": True})
        names: list[str] = getattr(compiled, "positiontup", None) or []
        return str(compiled), [compiled.params[name] for name in names]
    if module == "psycopg":
        compiled = statement.compile(dialect=_POSTGRES, compile_kwargs={"render_postcompile": True})
        return str(compiled), compiled.params
    raise InvalidRequest(
        f"execute() runs SQLAlchemy statements on a sqlite3 or psycopg connection, "
        f"not {type(connection).__name__} (a memory store has no SQL)"
    )


def execute(target: Any, statement: ClauseElement) -> Any:
    """Run a SQLAlchemy Core ``statement`` in the transaction of ``target``: a
    projection's context (``ctx``) or a store transaction. Returns the driver's
    cursor (awaitable on an async PostgreSQL store)."""
    connection = getattr(target, "connection", None)
    if connection is None:
        raise InvalidRequest("execute() needs a projection context or transaction with SQL")
    sql, params = _compiled(connection, statement)
    return connection.execute(sql, params)
