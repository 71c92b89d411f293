"""Appends inside the application's own transaction: store.transaction(connection).

The application's writes on its own connection (a users table with a unique
email, an outbox) and the events commit or roll back together, on
PostgreSQL (sync and async) and SQLite; misuse gets a typed error.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio

from eventfold import CommandHandler, InvalidRequest, SqliteEventStore, TransactionConflict
from eventfold.examples.bank import DepositMoney, OpenAccount, account
from eventfold.snapshots import SnapshotPolicy
from eventfold.store.postgres import (
    AsyncPostgresEventStore,
    PostgresEventStore,
    async_migrate,
    migrate,
)
from eventfold.testing._events import Deposited
from tests.support.pg import ADMIN_URL, new_schema_name

USERS = "CREATE TABLE IF NOT EXISTS {schema}.users (email text PRIMARY KEY, name text)"
OUTBOX = "CREATE TABLE IF NOT EXISTS {schema}.outbox (position numeric, topic text)"


@pytest.fixture
def pg(pg_database: str) -> Iterator[PostgresEventStore]:
    schema = new_schema_name()
    migrate(pg_database, schema=schema)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(USERS.format(schema=schema))
        conn.execute(OUTBOX.format(schema=schema))
    with PostgresEventStore(pg_database, schema=schema) as store:
        yield store


@pytest.fixture
def app_conn(pg_database: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_database) as conn:
        yield conn


def register(store: PostgresEventStore, conn: psycopg.Connection, email: str, name: str) -> int:
    """The pattern: a row with a unique email, the event and an outbox row, in one commit."""
    with store.transaction(conn) as tx:
        conn.execute(f"INSERT INTO {store.schema}.users VALUES (%s, %s)", (email, name))
        result = tx.append(f"user-{email}", [Deposited(amount=len(name))])
        conn.execute(
            f"INSERT INTO {store.schema}.outbox VALUES (%s, %s)", (result.position, "registered")
        )
    return result.position


def count(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    conn.rollback()
    assert row is not None
    return int(row[0])


def test_the_applications_writes_and_the_events_commit_together(
    pg: PostgresEventStore, app_conn: psycopg.Connection
) -> None:
    position = register(pg, app_conn, "ann@example.com", "Ann")
    (event,) = pg.read_all()
    assert event.position == position and event.stream == "user-ann@example.com"
    assert count(app_conn, f"{pg.schema}.users") == 1
    assert count(app_conn, f"{pg.schema}.outbox") == 1


def test_a_unique_violation_of_the_application_leaves_no_event(
    pg: PostgresEventStore, app_conn: psycopg.Connection
) -> None:
    register(pg, app_conn, "ann@example.com", "Ann")
    with pytest.raises(psycopg.errors.UniqueViolation):
        register(pg, app_conn, "ann@example.com", "Another Ann")
    app_conn.rollback()
    assert [e.stream for e in pg.read_all()] == ["user-ann@example.com"]
    assert pg.get_stream("user-ann@example.com") is not None
    assert count(app_conn, f"{pg.schema}.outbox") == 1


def test_inside_a_transaction_the_application_opened_its_commit_decides(
    pg: PostgresEventStore, app_conn: psycopg.Connection
) -> None:
    with pytest.raises(RuntimeError, match="undo"), app_conn.transaction():
        with pg.transaction(app_conn) as tx:
            tx.append("a", [Deposited(amount=1)])
        app_conn.execute(f"INSERT INTO {pg.schema}.users VALUES ('b@example.com', 'B')")
        raise RuntimeError("undo")
    assert list(pg.read_all()) == []
    with app_conn.transaction():
        with pg.transaction(app_conn) as tx:
            inside = tx.append("a", [Deposited(amount=1)])
        assert list(pg.read_all()) == []  # not committed yet: the application decides
    assert [e.position for e in pg.read_all()] == [inside.position]


def test_readers_wait_for_the_open_transaction_and_then_see_every_event_in_order(
    pg: PostgresEventStore, app_conn: psycopg.Connection
) -> None:
    with pg.transaction(app_conn) as tx:
        app_conn.execute(f"INSERT INTO {pg.schema}.users VALUES ('c@example.com', 'C')")
        inside = tx.append("c", [Deposited(amount=1)])
        after = pg.append("other", [Deposited(amount=2)])
        assert list(pg.read_all()) == []
        (holdup,) = pg.holdups()
        assert holdup.pid == app_conn.info.backend_pid
    assert [e.position for e in pg.read_all()] == [inside.position, after.position]


def test_a_command_handler_runs_inside_the_applications_transaction(
    pg: PostgresEventStore, app_conn: psycopg.Connection
) -> None:
    handler = CommandHandler(pg, account, snapshots=SnapshotPolicy(every=1))
    with pg.transaction(app_conn) as tx:
        result = handler.handle("acc-1", OpenAccount("ann", 5), transaction=tx)
        app_conn.execute(
            f"INSERT INTO {pg.schema}.outbox VALUES (%s, 'deposit')", (result.position,)
        )
    assert handler.load("acc-1").version == 2  # opened, and the first deposit
    assert pg.load_snapshot("acc-1") is None  # the handler cannot know of the commit
    with pytest.raises(RuntimeError), pg.transaction(app_conn) as tx:
        handler.handle("acc-1", DepositMoney(7), transaction=tx)
        raise RuntimeError("rolled back")
    assert handler.load("acc-1").version == 2  # opened, and the first deposit
    assert count(app_conn, f"{pg.schema}.outbox") == 1


def test_misuse_gets_a_typed_error_and_writes_nothing(
    pg: PostgresEventStore, app_conn: psycopg.Connection
) -> None:
    elsewhere = psycopg.connect(ADMIN_URL)
    with pytest.raises(InvalidRequest, match="store's database"), pg.transaction(elsewhere):
        pass
    elsewhere.close()
    closed = psycopg.connect(app_conn.info.dsn)
    closed.close()
    with pytest.raises(InvalidRequest, match="closed"), pg.transaction(closed):
        pass
    with pytest.raises(InvalidRequest, match="psycopg Connection"), pg.transaction("dsn"):
        pass
    assert list(pg.read_all()) == []
    assert count(app_conn, f"{pg.schema}.users") == 0


# -- asyncio ---------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def apg(pg_database: str) -> AsyncIterator[AsyncPostgresEventStore]:
    schema = new_schema_name()
    await async_migrate(pg_database, schema=schema)
    async with AsyncPostgresEventStore(pg_database, schema=schema) as store:
        yield store


@pytest.mark.asyncio
async def test_async_appends_join_the_applications_connection(
    apg: AsyncPostgresEventStore, pg_database: str
) -> None:
    async with await psycopg.AsyncConnection.connect(pg_database) as conn:
        await conn.execute(f"CREATE TABLE {apg.schema}.orders (id int)")
        await conn.commit()
        async with apg.transaction(conn) as tx:
            await conn.execute(f"INSERT INTO {apg.schema}.orders VALUES (1)")
            result = await tx.append("order-1", [Deposited(amount=1)])
        with pytest.raises(RuntimeError):
            async with apg.transaction(conn) as tx:
                await conn.execute(f"INSERT INTO {apg.schema}.orders VALUES (2)")
                await tx.append("order-2", [Deposited(amount=2)])
                raise RuntimeError("rolled back")
        cursor = await conn.execute(f"SELECT id FROM {apg.schema}.orders")
        assert [row[0] for row in await cursor.fetchall()] == [1]
    assert [e.position async for e in apg.read_all()] == [result.position]


@pytest.mark.asyncio
async def test_async_joining_after_the_applications_own_writes_is_refused(
    apg: AsyncPostgresEventStore, pg_database: str
) -> None:
    async with await psycopg.AsyncConnection.connect(pg_database) as conn:
        await conn.execute("CREATE TEMP TABLE orders (id int)")
        await conn.commit()
        await conn.execute("INSERT INTO orders VALUES (1)")  # its id: readers may pass it
        with pytest.raises(InvalidRequest, match="before the transaction's first write"):
            async with apg.transaction(conn) as tx:
                await tx.append("order-1", [Deposited(amount=1)])
        await conn.rollback()
        # Joined first, the same work appends, and its events follow a newer append.
        async with apg.transaction(conn) as tx:
            await conn.execute("INSERT INTO orders VALUES (1)")
            newer = await apg.append("other", [Deposited(amount=0)])
            first = await tx.append("order-1", [Deposited(amount=1)])
    assert newer.position < first.position
    assert [e.position async for e in apg.read_all()] == [newer.position, first.position]


# -- SQLite -----------------------------------------------------------------------------------


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[SqliteEventStore]:
    with SqliteEventStore(tmp_path / "app.db") as store:
        with sqlite3.connect(store.path) as conn:
            conn.execute("CREATE TABLE users (email text PRIMARY KEY)")
        yield store


def test_sqlite_appends_join_the_applications_connection(lite: SqliteEventStore) -> None:
    conn = sqlite3.connect(lite.path)
    try:
        with lite.transaction(conn) as tx:
            conn.execute("INSERT INTO users VALUES ('ann@example.com')")
            first = tx.append("user-ann", [Deposited(amount=1)])
        with pytest.raises(sqlite3.IntegrityError), lite.transaction(conn) as tx:
            tx.append("user-ann-2", [Deposited(amount=2)])
            conn.execute("INSERT INTO users VALUES ('ann@example.com')")
        # Joined: the application's own open transaction, and its rollback.
        conn.execute("INSERT INTO users VALUES ('bob@example.com')")
        with lite.transaction(conn) as tx:
            tx.append("user-bob", [Deposited(amount=3)])
        conn.rollback()
        assert [e.position for e in lite.read_all()] == [first.position]
        assert conn.execute("SELECT email FROM users").fetchall() == [("ann@example.com",)]
    finally:
        conn.close()


def test_sqlite_refuses_a_connection_to_another_file(
    lite: SqliteEventStore, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "other.db")
    try:
        with pytest.raises(InvalidRequest, match="store's file"), lite.transaction(other):
            pass
        with pytest.raises(InvalidRequest, match=r"sqlite3\.Connection"), lite.transaction(42):
            pass
    finally:
        other.close()
    assert list(lite.read_all()) == []


def test_appends_in_a_transaction_come_after_what_newer_transactions_committed(
    pg: PostgresEventStore, app_conn: psycopg.Connection
) -> None:
    for open_transaction in (pg.transaction, lambda: pg.transaction(app_conn)):
        pg.append("b", [Deposited(amount=0)])
        with open_transaction() as tx:
            first = tx.append("a", [Deposited(amount=1)])  # this transaction has its id now
            newer = pg.append("b", [Deposited(amount=2)])  # a newer one appends to b, commits
            last = tx.append("b", [Deposited(amount=3)])  # after it in the log, as its version
        assert first.position < newer.position < last.position
    log = [(e.stream, e.version) for e in pg.read_all()]
    for stream in ("a", "b"):
        versions = [v for s, v in log if s == stream]
        assert versions == list(range(1, len(versions) + 1)), log
    assert [e.data.amount for e in pg.read("b")] == [0, 2, 3, 0, 2, 3]


@pytest.mark.parametrize(
    "isolation",
    [psycopg.IsolationLevel.REPEATABLE_READ, psycopg.IsolationLevel.SERIALIZABLE],
    ids=["repeatable-read", "serializable"],
)
def test_a_fixed_snapshot_that_cannot_see_a_newer_transactions_events_conflicts(
    pg: PostgresEventStore, app_conn: psycopg.Connection, isolation: psycopg.IsolationLevel
) -> None:
    app_conn.isolation_level = isolation
    pg.append("b", [Deposited(amount=0)])
    with (
        pytest.raises(TransactionConflict, match="'b'") as conflict,
        pg.transaction(app_conn) as tx,
    ):
        tx.append("a", [Deposited(amount=1)])  # its snapshot: before the next append
        pg.append("b", [Deposited(amount=2)])
        tx.append("b", [Deposited(amount=3)])  # its snapshot shows b at version 1
    assert conflict.value.retryable
    with pg.transaction(app_conn) as tx:  # run again: a new snapshot
        tx.append("a", [Deposited(amount=1)])
        tx.append("b", [Deposited(amount=3)])
    assert [(e.stream, e.version) for e in pg.read_all()] == [
        ("b", 1),
        ("b", 2),
        ("a", 1),
        ("b", 3),
    ]
