"""The async SQLite store's transactions send BEGIN with their first statement.

One trip to the transaction's thread less per transaction; what must not
change: everything written in the block, through ``execute`` or through the
connection itself, commits or rolls back together, and a transaction that a
cancelled task left half-sent is ended all the same.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from eventfold.store.sqlite import AsyncSqliteEventStore
from eventfold.testing._events import Deposited

pytestmark = pytest.mark.asyncio
GUARD = 20.0


async def _rows(path: Path) -> list[tuple[int]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT n FROM t ORDER BY n").fetchall()


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncSqliteEventStore]:
    async with AsyncSqliteEventStore(tmp_path / "tx.db") as opened:
        async with opened.transaction() as tx:  # the first one begins at once
            await tx.execute("CREATE TABLE t (n INTEGER)")
        yield opened


async def test_writes_through_the_connection_itself_roll_back_with_the_block(
    store: AsyncSqliteEventStore, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="undo"):
        async with store.transaction() as tx:
            # Reached for before any statement: the transaction begins now.
            tx.connection.execute("INSERT INTO t VALUES (1)")
            raise RuntimeError("undo")
    assert await _rows(tmp_path / "tx.db") == []
    async with store.transaction() as tx:
        tx.connection.execute("INSERT INTO t VALUES (2)")
        await tx.execute("INSERT INTO t VALUES (3)")
    assert await _rows(tmp_path / "tx.db") == [(2,), (3,)]


async def test_statements_and_appends_commit_or_roll_back_together(
    store: AsyncSqliteEventStore, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.append("s", [Deposited(amount=1)])
            await tx.execute("INSERT INTO t VALUES (1)")
            raise RuntimeError("undo")
    assert await _rows(tmp_path / "tx.db") == []
    assert await store.last_position() == 0
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO t VALUES (4)")
        await tx.append("s", [Deposited(amount=4)])
    assert await _rows(tmp_path / "tx.db") == [(4,)]
    assert [e.data async for e in store.read("s")] == [Deposited(amount=4)]


async def test_a_block_that_sends_nothing_holds_no_write_lock(
    store: AsyncSqliteEventStore, tmp_path: Path
) -> None:
    async with store.transaction():
        # Another connection writes while the block is open: no lock is held.
        with sqlite3.connect(tmp_path / "tx.db", timeout=0) as other:
            other.execute("INSERT INTO t VALUES (5)")
    assert await _rows(tmp_path / "tx.db") == [(5,)]


async def test_a_transaction_whose_task_is_cancelled_mid_statement_is_ended(
    store: AsyncSqliteEventStore, tmp_path: Path
) -> None:
    entered = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow(n: int) -> int:
        loop.call_soon_threadsafe(entered.set)
        with sqlite3.connect(":memory:") as scratch:  # busy for a while, on the thread
            scratch.execute(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000)"
                " SELECT count(*) FROM c"
            ).fetchone()
        return n

    async def write() -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (6)")  # begins with this statement
            await tx._run(slow, 1)  # type: ignore[attr-defined]
            await tx.execute("INSERT INTO t VALUES (7)")

    task = asyncio.create_task(write())
    await asyncio.wait_for(entered.wait(), GUARD)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Rolled back, and the write lock is free: the next transaction commits.
    async with asyncio.timeout(GUARD):
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (8)")
    assert await _rows(tmp_path / "tx.db") == [(8,)]
