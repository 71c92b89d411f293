"""eventfold.sqlalchemy: events in the application's Session, read models in Core.

On SQLite (the store's file, SQLAlchemy's default pysqlite driver) and on
PostgreSQL (psycopg 3, sync and asyncio): what the application writes through
its session and the events of its commands commit together, or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from eventfold import AsyncCommandHandler, CommandHandler, Decider, RecordedEvent
from eventfold.projections import Projection, ProjectionContext, ProjectionRunner
from eventfold.sqlalchemy import async_transaction, execute, store_tables, transaction
from eventfold.store import EventStore
from eventfold.store.postgres import AsyncPostgresEventStore, PostgresEventStore, migrate
from eventfold.store.sqlite import SqliteEventStore
from eventfold.testing._events import Deposited
from tests.support.pg import new_schema_name


class Base(DeclarativeBase):
    pass


class Invoice(Base):
    __tablename__ = "invoices"
    number: Mapped[str] = mapped_column(primary_key=True)
    amount: Mapped[int]


@dataclass(frozen=True)
class Issue:
    amount: int


ledger = Decider(
    lambda command, total: [Deposited(amount=command.amount)],
    lambda total, event: total + event.amount,
    int,
)

metadata = sa.MetaData()
totals = sa.Table(
    "sa_totals",
    metadata,
    sa.Column("account", sa.Text, primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
)


@dataclass
class Site:
    engine: sa.Engine
    store: EventStore
    async_url: str | None = None
    schema: str | None = None
    url: str | None = None  # PostgreSQL, without the search path


@pytest.fixture(params=["sqlite", "postgres"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    if request.param == "sqlite":
        path = tmp_path / "app.db"
        store = SqliteEventStore(path)
        engine = sa.create_engine(f"sqlite:///{path}")
        found = Site(engine, store)
    else:
        url = request.getfixturevalue("pg_database")
        schema = new_schema_name()
        migrate(url, schema=schema)
        # The application's tables in the store's schema: first on the search path.
        conninfo = f"{url} options=-csearch_path={schema}"
        store = PostgresEventStore(conninfo, schema=schema)
        engine = sa.create_engine(
            "postgresql+psycopg://", creator=lambda: psycopg.connect(conninfo)
        )
        found = Site(engine, store, async_url=conninfo, schema=schema, url=url)
    Base.metadata.create_all(engine)
    metadata.create_all(engine)
    try:
        yield found
    finally:
        engine.dispose()
        store.close()


def invoices(site: Site) -> list[tuple[str, int]]:
    with Session(site.engine) as session:
        return [(i.number, i.amount) for i in session.scalars(sa.select(Invoice))]


def test_events_commit_with_the_sessions_other_writes(site: Site) -> None:
    handler = CommandHandler(site.store, ledger)
    with Session(site.engine) as session:
        session.add(Invoice(number="2026-1", amount=30))
        with transaction(site.store, session) as tx:
            handler.handle("invoice-2026-1", Issue(30), transaction=tx)
        session.commit()
    assert invoices(site) == [("2026-1", 30)]
    assert [e.data for e in site.store.read("invoice-2026-1")] == [Deposited(amount=30)]


def test_a_rollback_undoes_the_events_too(site: Site) -> None:
    handler = CommandHandler(site.store, ledger)
    with Session(site.engine) as session:
        # eventfold first this time: it begins the session's transaction.
        with transaction(site.store, session) as tx:
            handler.handle("invoice-2026-2", Issue(10), transaction=tx)
        session.add(Invoice(number="2026-2", amount=10))
        session.flush()
        session.rollback()
    assert invoices(site) == []
    assert site.store.get_stream("invoice-2026-2") is None
    assert site.store.last_position() == 0


def test_a_read_model_in_sqlalchemy_core(site: Site) -> None:
    for n in range(3):
        site.store.append(f"acc-{n % 2}", [Deposited(amount=n)])

    def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
        existing = execute(
            ctx, sa.select(totals.c.n).where(totals.c.account == event.stream)
        ).fetchone()
        if existing is None:
            execute(ctx, sa.insert(totals).values(account=event.stream, n=event.data.amount))
        else:
            execute(
                ctx,
                sa.update(totals)
                .where(totals.c.account == event.stream)
                .values(n=totals.c.n + event.data.amount),
            )

    assert ProjectionRunner(site.store, Projection("sa-totals", handle)).run_once() == 3
    with site.engine.connect() as conn:
        rows = conn.execute(sa.select(totals).order_by(totals.c.account)).all()
    assert [tuple(r) for r in rows] == [("acc-0", 2), ("acc-1", 1)]


@pytest.mark.asyncio
async def test_an_async_session_on_postgres(pg_database: str) -> None:
    schema = new_schema_name()
    migrate(pg_database, schema=schema)
    conninfo = f"{pg_database} options=-csearch_path={schema}"
    engine = create_async_engine(
        "postgresql+psycopg://", async_creator=lambda: psycopg.AsyncConnection.connect(conninfo)
    )
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    try:
        async with AsyncPostgresEventStore(pg_database, schema=schema) as store:
            handler = AsyncCommandHandler(store, ledger)
            async with AsyncSession(engine) as session:
                session.add(Invoice(number="2026-3", amount=7))
                async with async_transaction(store, session) as tx:
                    await handler.handle("invoice-2026-3", Issue(7), transaction=tx)
                await session.commit()
            async with AsyncSession(engine) as session:
                async with async_transaction(store, session) as tx:
                    await handler.handle("invoice-2026-4", Issue(1), transaction=tx)
                await session.rollback()
            assert [e.stream async for e in store.read_all()] == ["invoice-2026-3"]
            async with AsyncSession(engine) as session:
                numbers = (await session.scalars(sa.select(Invoice.number))).all()
            assert numbers == ["2026-3"]
    finally:
        await engine.dispose()


def test_execute_refuses_a_store_without_sql() -> None:
    from eventfold import InvalidRequest, MemoryEventStore  # noqa: PLC0415

    with MemoryEventStore() as store, store.transaction() as tx:
        target: Any = tx
        with pytest.raises(InvalidRequest, match="SQL"):
            execute(target, sa.select(totals))


def autogenerate_diff(site: Site, metadata: sa.MetaData) -> list[Any]:
    """What Alembic's autogenerate would propose for the store's database."""
    from alembic.autogenerate import compare_metadata  # noqa: PLC0415
    from alembic.migration import MigrationContext  # noqa: PLC0415

    opts: dict[str, Any] = {"compare_type": True, "compare_server_default": True}
    engine = site.engine
    if site.schema is not None:
        # The store's schema as a named one (the default schema is public here).
        url, schema = site.url, site.schema
        engine = sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url))
        opts["include_schemas"] = True
        opts["include_name"] = lambda name, kind, parent: kind != "schema" or name == schema
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn, opts=opts), metadata))
    finally:
        if engine is not site.engine:
            engine.dispose()


def test_the_stores_tables_in_the_applications_metadata_leave_autogenerate_nothing_to_do(
    site: Site,
) -> None:
    app = sa.MetaData(schema=site.schema)  # the application's own tables, none of the store's
    for table in (*Base.metadata.tables.values(), totals):
        table.to_metadata(app, schema=site.schema)
    dialect = "sqlite" if site.schema is None else "postgresql"
    # Without them, autogenerate would propose dropping every table of the store.
    proposed = {d[1].name for d in autogenerate_diff(site, app) if d[0] == "remove_table"}
    tables = store_tables(sa.MetaData(), dialect, schema=site.schema or "eventfold")
    assert {t.name for t in tables.values()} <= proposed
    store_tables(app, dialect, schema=site.schema or "eventfold")
    assert autogenerate_diff(site, app) == []
