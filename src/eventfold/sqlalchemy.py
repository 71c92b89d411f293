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
    import sqlalchemy as sa
    from sqlalchemy import MetaData, Table
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session
    from sqlalchemy.sql import ClauseElement
    from sqlalchemy.types import UserDefinedType
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "eventfold.sqlalchemy needs SQLAlchemy 2: pip install 'eventfold[sqlalchemy]'"
    ) from exc

__all__ = ["XID8", "async_transaction", "execute", "store_tables", "transaction"]

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


class XID8(UserDefinedType[int]):
    """PostgreSQL's ``xid8`` (a transaction id): the events table's ``tx`` column."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


def store_tables(
    metadata: MetaData, dialect: str = "sqlite", *, schema: str = "eventfold"
) -> dict[str, Table]:
    """Declare the store's tables in ``metadata``, as ``migrate()`` makes them.

    With them in the application's ``MetaData``, Alembic's autogenerate sees
    the store's tables as the application's own and proposes nothing for them
    (it would otherwise offer to drop them). Create and upgrade them with
    eventfold (the store's ``migrate``), not with Alembic. ``dialect`` is
    ``"sqlite"`` (tables ``eventfold_*`` in the file) or ``"postgresql"``
    (tables in ``schema``). Returns them by their eventfold name (``events``,
    ``streams``, ...).
    """
    if dialect == "sqlite":
        return _sqlite_tables(metadata)
    if dialect == "postgresql":
        return _postgres_tables(metadata, schema)
    raise InvalidRequest(f'dialect must be "sqlite" or "postgresql", not {dialect!r}')


def _sqlite_tables(metadata: MetaData) -> dict[str, Table]:
    text, blob, number = sa.Text, sa.LargeBinary, sa.Integer
    events = Table(
        "eventfold_events",
        metadata,
        # INTEGER PRIMARY KEY AUTOINCREMENT: the rowid, declared without NOT NULL.
        sa.Column("position", number, primary_key=True, autoincrement=True, nullable=True),
        sa.Column("stream", text, nullable=False),
        sa.Column("version", number, nullable=False),
        sa.Column("id", blob, nullable=False),
        sa.Column("type", text, nullable=False),
        sa.Column("schema_version", number, nullable=False),
        sa.Column("data", blob, nullable=False),
        sa.Column("metadata", blob),
        sa.Column("recorded_at", number, nullable=False),
        sa.Index("eventfold_events_stream_version", "stream", "version", unique=True),
        sa.Index("eventfold_events_id", "id", unique=True),
        sqlite_autoincrement=True,
    )
    streams = Table(
        "eventfold_streams",
        metadata,
        sa.Column("stream", text, primary_key=True),
        sa.Column("metadata", blob),
        sa.Column("deletion", blob),
        sa.Column("truncation", blob),
        sa.Column("first_version", number, nullable=False, server_default=sa.text("1")),
        sqlite_with_rowid=False,
    )
    sa.Index(
        "eventfold_streams_deleted",
        streams.c.stream,
        sqlite_where=streams.c.deletion.is_not(None),
    )
    snapshots = Table(
        "eventfold_snapshots",
        metadata,
        sa.Column("stream", text, primary_key=True),
        sa.Column("version", number, primary_key=True),
        sa.Column("state_type", text, nullable=False),
        sa.Column("schema_version", number, nullable=False),
        sa.Column("data", blob, nullable=False),
        sa.Column("recorded_at", number, nullable=False),
        sqlite_with_rowid=False,
    )
    checkpoints = Table(
        "eventfold_checkpoints",
        metadata,
        sa.Column("name", text, primary_key=True),
        sa.Column("position", number, nullable=False, server_default=sa.text("0")),
        sa.Column("owner", text),
        sa.Column("lease_expires_at", number, nullable=False, server_default=sa.text("0")),
        sa.Column("updated_at", number, nullable=False, server_default=sa.text("0")),
        sqlite_with_rowid=False,
    )
    dead_letters = Table(
        "eventfold_dead_letters",
        metadata,
        sa.Column("name", text, primary_key=True),
        sa.Column("position", number, primary_key=True),
        sa.Column("event_id", blob, nullable=False),
        sa.Column("stream", text, nullable=False),
        sa.Column("version", number, nullable=False),
        sa.Column("type", text, nullable=False),
        sa.Column("error", text, nullable=False),
        sa.Column("recorded_at", number, nullable=False),
        sqlite_with_rowid=False,
    )
    aliases = Table(
        "eventfold_projection_aliases",
        metadata,
        sa.Column("alias", text, primary_key=True),
        sa.Column("target", text, nullable=False),
        sqlite_with_rowid=False,
    )
    return {
        "events": events,
        "streams": streams,
        "snapshots": snapshots,
        "checkpoints": checkpoints,
        "dead_letters": dead_letters,
        "projection_aliases": aliases,
    }


def _postgres_tables(metadata: MetaData, schema: str) -> dict[str, Table]:
    # Reflection then knows xid8 (autogenerate compares the tx column quietly).
    postgresql.base.ischema_names.setdefault("xid8", XID8)
    text, blob, big = sa.Text, sa.LargeBinary, sa.BigInteger
    when = postgresql.TIMESTAMP(timezone=True)
    now = sa.text("now()")
    events = Table(
        "events",
        metadata,
        sa.Column("tx", XID8(), nullable=False, server_default=sa.text("pg_current_xact_id()")),
        sa.Column("seq", big, nullable=False, autoincrement=True),
        sa.Column("stream", text, nullable=False),
        sa.Column("version", big, nullable=False),
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("type", text, nullable=False),
        sa.Column("schema_version", sa.Integer, nullable=False),
        sa.Column("data", blob, nullable=False),
        sa.Column("metadata", blob),
        sa.Column("recorded_at", when, nullable=False, server_default=now),
        sa.Column("tx_id", big, sa.Computed("((tx)::text)::bigint", persisted=True)),
        sa.Column(
            "recorded_us",
            big,
            nullable=False,
            server_default=sa.text("((EXTRACT(epoch FROM now()) * (1000000)::numeric))::bigint"),
        ),
        sa.PrimaryKeyConstraint("tx", "seq", name="events_pkey"),
        sa.UniqueConstraint("stream", "version", name="events_stream_version"),
        sa.UniqueConstraint("id", name="events_id"),
        sa.CheckConstraint("version > 0", name="events_version_positive"),
        schema=schema,
    )
    streams = Table(
        "streams",
        metadata,
        sa.Column("stream", text, primary_key=True),
        sa.Column("metadata", blob),
        sa.Column("deletion", blob),
        sa.Column("truncation", blob),
        schema=schema,
    )
    sa.Index("streams_deleted", streams.c.stream, postgresql_where=streams.c.deletion.is_not(None))
    snapshots = Table(
        "snapshots",
        metadata,
        sa.Column("stream", text, primary_key=True),
        sa.Column("version", big, primary_key=True),
        sa.Column("state_type", text, nullable=False),
        sa.Column("schema_version", sa.Integer, nullable=False),
        sa.Column("data", blob, nullable=False),
        sa.Column("recorded_at", when, nullable=False, server_default=now),
        schema=schema,
    )
    checkpoints = Table(
        "checkpoints",
        metadata,
        sa.Column("name", text, primary_key=True),
        sa.Column("position", sa.Numeric(40), nullable=False, server_default=sa.text("0")),
        sa.Column("owner", text),
        sa.Column("lease_expires", when, nullable=False, server_default=sa.text("'-infinity'")),
        sa.Column("updated_at", when, nullable=False, server_default=now),
        schema=schema,
    )
    dead_letters = Table(
        "dead_letters",
        metadata,
        sa.Column("name", text, primary_key=True),
        sa.Column("position", sa.Numeric(40), primary_key=True),
        sa.Column("event_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("stream", text, nullable=False),
        sa.Column("version", big, nullable=False),
        sa.Column("type", text, nullable=False),
        sa.Column("error", text, nullable=False),
        sa.Column("recorded_at", when, nullable=False, server_default=now),
        schema=schema,
    )
    aliases = Table(
        "projection_aliases",
        metadata,
        sa.Column("alias", text, primary_key=True),
        sa.Column("target", text, nullable=False),
        schema=schema,
    )
    versions = Table(
        "schema_version",
        metadata,
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("applied_at", when, nullable=False, server_default=now),
        schema=schema,
    )
    return {
        "events": events,
        "streams": streams,
        "snapshots": snapshots,
        "checkpoints": checkpoints,
        "dead_letters": dead_letters,
        "projection_aliases": aliases,
        "schema_version": versions,
    }
