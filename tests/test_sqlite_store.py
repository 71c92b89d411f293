"""The SQLite store: conformance suite, persistence, several processes on one file."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from eventfold import (
    ANY,
    NO_STREAM,
    AsyncSqliteEventStore,
    ConfigurationError,
    NewEvent,
    SqliteEventStore,
    StoreError,
    StoreTimeout,
    WrongExpectedVersion,
)
from eventfold.store.sqlite._db import SCHEMA_VERSION, SQL
from eventfold.testing import (
    AsyncEventStoreLifecycleSuite,
    AsyncEventStoreSuite,
    EventStoreConcurrencySuite,
    EventStoreLifecycleSuite,
    EventStoreSuite,
    follow_log,
)
from eventfold.testing._events import Deposited

CTX = multiprocessing.get_context("spawn")


class TestSqliteEventStore(EventStoreSuite, EventStoreLifecycleSuite, EventStoreConcurrencySuite):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SqliteEventStore]:
        with SqliteEventStore(tmp_path / "events.db", durability="normal") as store:
            yield store


class TestAsyncSqliteEventStore(AsyncEventStoreSuite, AsyncEventStoreLifecycleSuite):
    @pytest_asyncio.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[AsyncSqliteEventStore]:
        async with AsyncSqliteEventStore(tmp_path / "events.db", durability="normal") as store:
            yield store


class TestSqliteMemoryEventStore(
    EventStoreSuite, EventStoreLifecycleSuite, EventStoreConcurrencySuite
):
    """``:memory:``: one database shared by every thread of the store."""

    @pytest.fixture
    def store(self) -> Iterator[SqliteEventStore]:
        with SqliteEventStore(":memory:") as store:
            yield store


class TestAsyncSqliteMemoryEventStore(AsyncEventStoreSuite, AsyncEventStoreLifecycleSuite):
    @pytest_asyncio.fixture
    async def store(self) -> AsyncIterator[AsyncSqliteEventStore]:
        async with AsyncSqliteEventStore(":memory:") as store:
            yield store


def test_events_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "bank.db"
    with SqliteEventStore(path) as store:
        store.append("acc-1", [NewEvent(data=Deposited(amount=5), metadata={"user": "ann"})])
    with SqliteEventStore(path) as store:
        (event,) = store.read("acc-1")
        assert event.data == Deposited(amount=5)
        assert event.metadata == {"user": "ann"}
        assert store.append("acc-1", [Deposited(amount=1)], expected=1).to_version == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"durability": "sometimes"}, "durability"), ({"busy_timeout": -1}, "busy_timeout")],
)
def test_bad_configuration(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SqliteEventStore(tmp_path / "x.db", **kwargs)  # type: ignore[arg-type]


def test_directory_path_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="directory"):
        SqliteEventStore(tmp_path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    SqliteEventStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(ConfigurationError, match="schema version 99"):
        SqliteEventStore(path)


def test_not_a_database_gives_store_error(tmp_path: Path) -> None:
    # SQLite's header, then bytes that are not a database: SQLite says SQLITE_NOTADB.
    path = tmp_path / "garbage.db"
    path.write_bytes(b"SQLite format 3\x00" + b"this is not a database file" * 200)
    with pytest.raises(StoreError) as info:
        SqliteEventStore(path)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    assert not info.value.retryable


def test_locked_database_times_out_with_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    with SqliteEventStore(path, busy_timeout=0.05) as store:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreTimeout) as info:
                store.append("s", [Deposited(amount=1)])
            assert info.value.retryable
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert store.get_stream("s") is None
        store.append("s", [Deposited(amount=1)])
        assert store.get_stream("s") is not None


# -- several processes on one file ----------------------------------------------------------


def _race_once(path: str, barrier: object, results: object, name: str) -> None:
    with SqliteEventStore(path) as store:
        barrier.wait()  # type: ignore[attr-defined]
        try:
            store.append("contested", [Deposited(amount=1)], expected=3)
            results.put((name, "won"))  # type: ignore[attr-defined]
        except WrongExpectedVersion as exc:
            results.put((name, f"lost at {exc.actual}"))  # type: ignore[attr-defined]


@pytest.mark.slow
def test_two_processes_same_stream_one_winner(tmp_path: Path) -> None:
    for round_ in range(3):
        path = str(tmp_path / f"race-{round_}.db")
        with SqliteEventStore(path) as store:
            store.append("contested", [Deposited(amount=0)] * 3, expected=NO_STREAM)
        barrier = CTX.Barrier(2)
        results = CTX.Queue()
        procs = [
            CTX.Process(target=_race_once, args=(path, barrier, results, n)) for n in ("a", "b")
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
        outcomes = sorted(results.get(timeout=5)[1] for _ in procs)
        assert outcomes == ["lost at 4", "won"]
        with SqliteEventStore(path) as store:
            assert [e.version for e in store.read("contested")] == [1, 2, 3, 4]


def _append_many(path: str, writer: int, count: int) -> None:
    with SqliteEventStore(path, durability="normal", busy_timeout=30) as store:
        for i in range(count):
            stream = "shared" if i % 5 == 0 else f"p{writer}-{i % 3}"
            store.append(stream, [Deposited(amount=writer * 1000 + i)] * (1 + i % 2), expected=ANY)


@pytest.mark.slow
def test_processes_write_while_a_reader_tails(tmp_path: Path) -> None:
    path = str(tmp_path / "multi.db")
    writers, count = 4, 60
    with SqliteEventStore(path, durability="normal") as store:
        procs = [CTX.Process(target=_append_many, args=(path, w, count)) for w in range(writers)]
        for proc in procs:
            proc.start()
        seen = follow_log(store, lambda: all(not p.is_alive() for p in procs), limit=13)
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
        expected_total = writers * sum(1 + i % 2 for i in range(count))
        assert len(seen) == expected_total
        assert len({e.id for e in seen}) == expected_total
        assert list(store.read_all()) == seen
        for stream in {e.stream for e in seen}:
            versions = [e.version for e in store.read(stream)]
            assert versions == list(range(1, len(versions) + 1))


def test_schema_v1_file_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        for statement in SQL["migration_1"].split(";\n"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("PRAGMA user_version=1")
        conn.execute(
            "INSERT INTO eventfold_events (stream, version, id, type, schema_version, data,"
            " metadata, recorded_at) VALUES ('old', 1, ?, 'eventfold.testing.Deposited', 1,"
            " '{\"amount\":7}', NULL, 0)",
            (b"\x01" * 16,),
        )
    with SqliteEventStore(path) as store:
        assert [e.data for e in store.read("old")] == [Deposited(amount=7)]
        store.delete_stream("old", reason="migrated file supports deletion")
        assert store.get_stream("old").deleted is not None  # type: ignore[union-attr]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "eventfold_streams_deleted" in indexes  # version 4


def test_log_reads_never_scan_the_streams_table(tmp_path: Path) -> None:
    # Deleted streams are found through their own index: a log read costs the
    # same with a million streams as with ten.
    with SqliteEventStore(tmp_path / "plan.db") as store:
        conn = store._db.connection()
        for name in ("read_all", "read_all_filtered"):
            params = (0, 10) if name == "read_all" else (0, None, None, 10)
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + SQL[name], params)]
            streams = [step for step in plan if "eventfold_streams" in step]
            assert streams and all(
                "USING INDEX eventfold_streams_deleted" in step
                or "USING COVERING INDEX eventfold_streams_deleted" in step
                for step in streams
            ), plan


def test_connections_of_finished_threads_are_closed(tmp_path: Path) -> None:
    with SqliteEventStore(tmp_path / "threads.db") as store:
        for i in range(20):
            worker = threading.Thread(target=store.append, args=(f"s-{i}", [Deposited(amount=i)]))
            worker.start()
            worker.join()
        store.append("main", [Deposited(amount=0)])
        # The main thread's connection plus at most the last worker's.
        assert len(store._db._handles) <= 2
        assert sum(1 for _ in store.read_all()) == 21
