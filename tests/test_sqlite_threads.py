"""Threads of one process on one SQLite store: the write lock, close(), ``:memory:``.

Waits in these tests are bounded joins and events: a test that would hang on
a regression fails after its bound instead.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from eventfold import (
    AsyncSqliteEventStore,
    SqliteEventStore,
    StoreClosed,
    StoreError,
    StoreTimeout,
)
from eventfold.projections import Projection, ProjectionContext, ProjectionRunner
from eventfold.testing._events import Deposited

BOUND = 10.0  # seconds a step may take before the test calls it hung


def in_thread(name: str, target: object) -> tuple[threading.Thread, list[object]]:
    """Run ``target()`` in a thread; its result or exception lands in the list."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(target())  # type: ignore[operator]
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread, outcome


# -- the write lock -----------------------------------------------------------------------


def test_a_hung_projection_handler_makes_writers_time_out_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.db"
    store = SqliteEventStore(path, busy_timeout=0.3)
    store.append("s", [Deposited(amount=1)])
    entered, release = threading.Event(), threading.Event()

    def handle(ctx: ProjectionContext, event: object) -> None:
        entered.set()
        release.wait(BOUND)

    runner = ProjectionRunner(store, Projection("slow", handle))
    worker, _ = in_thread("slow-projection", runner.run_once)
    try:
        assert entered.wait(BOUND)
        with caplog.at_level(logging.WARNING, logger="eventfold.store.sqlite"):
            appender, outcome = in_thread(
                "appender", lambda: store.append("t", [Deposited(amount=2)])
            )
            appender.join(BOUND)
            assert not appender.is_alive(), "the append waited past busy_timeout"
        [error] = outcome
        assert isinstance(error, StoreTimeout) and error.retryable
        message = str(error)
        assert str(path) in message
        assert "'slow-projection'" in message
        waited = float(re.search(r"waited (\d+\.\d) s", message).group(1))  # type: ignore[union-attr]
        held = float(re.search(r"held it for (\d+\.\d) s", message).group(1))  # type: ignore[union-attr]
        assert waited >= 0.3 and held >= waited
        logged = [r for r in caplog.records if r.name == "eventfold.store.sqlite"]
        assert [(r.levelname, r.getMessage()) for r in logged] == [("WARNING", message)]
        holder = store.write_lock_holder()
        assert holder is not None and holder[0] == "slow-projection"
        assert time.monotonic() - holder[1] >= waited
    finally:
        release.set()
        worker.join(BOUND)
    assert store.write_lock_holder() is None
    assert store.get_stream("t") is None  # the timed-out append wrote nothing
    assert store.append("t", [Deposited(amount=2)]).to_version == 1
    store.close()


def test_a_write_inside_a_write_transaction_of_the_same_thread_fails_at_once(
    tmp_path: Path,
) -> None:
    # It used to wait for itself forever; SQLite would refuse it too.
    store = SqliteEventStore(tmp_path / "events.db", busy_timeout=60)

    def nested() -> None:
        with store._db.write_transaction():
            store.append("s", [Deposited(amount=1)])

    thread, outcome = in_thread("nested", nested)
    thread.join(BOUND)
    assert not thread.is_alive(), "the nested write waited for itself"
    [error] = outcome
    assert isinstance(error, StoreError) and not isinstance(error, StoreTimeout)
    assert "already holds the write transaction" in str(error)
    assert store.get_stream("s") is None
    store.close()


# -- close() while other threads use the store -------------------------------------------

CLOSE_DURING_READS = """
import asyncio, sys, threading
from eventfold import AsyncSqliteEventStore, SqliteEventStore, StoreClosed
from eventfold.testing._events import Deposited

folder, flavour, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])


def sync_round(path):
    store = SqliteEventStore(path, durability="off", page_size=20)
    store.append("s", [Deposited(amount=i) for i in range(200)])
    reading = threading.Barrier(3)
    outcomes = []

    def reader():
        waiting = True
        try:
            while True:
                for _ in store.read_all():
                    if waiting:
                        waiting = False
                        reading.wait()
        except StoreClosed:
            outcomes.append("closed")
        except BaseException as exc:
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    reading.wait()
    store.close()
    for thread in threads:
        thread.join()
    return outcomes, store


async def async_round(path):
    store = AsyncSqliteEventStore(path, durability="off", page_size=20)
    await store.append("s", [Deposited(amount=i) for i in range(200)])
    started = asyncio.Event()
    outcomes = []

    async def reader():
        try:
            while True:
                async for _ in store.read_all():
                    started.set()
        except StoreClosed:
            outcomes.append("closed")
        except BaseException as exc:
            outcomes.append(repr(exc))

    tasks = [asyncio.create_task(reader()) for _ in range(2)]
    await started.wait()
    await store.close()
    await asyncio.gather(*tasks)
    try:
        await store.append("s", [Deposited(amount=0)])
        outcomes.append("appended after close")
    except StoreClosed:
        pass
    return outcomes, None


for n in range(rounds):
    path = f"{folder}/{flavour}-{n}.db"
    if flavour == "sync":
        outcomes, store = sync_round(path)
        for call in (lambda: list(store.read_all()), lambda: store.append("s", [])):
            try:
                call()
                outcomes.append("worked after close")
            except StoreClosed:
                pass
    else:
        outcomes, _ = asyncio.run(async_round(path))
    if outcomes != ["closed", "closed"]:
        sys.exit(f"round {n}: {outcomes}")
print("ok", rounds)
"""


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_close_during_reads_in_threads_ends_them_with_store_closed(
    tmp_path: Path, flavour: str
) -> None:
    # In a child process: the crash this guards against is a segfault. Before
    # the fix nearly every run of 10 rounds crashed.
    done = subprocess.run(
        [sys.executable, "-c", CLOSE_DURING_READS, str(tmp_path), flavour, "20"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "ok 20"


def test_close_lets_a_running_write_transaction_commit(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = SqliteEventStore(path, busy_timeout=60)
    inside, release = threading.Event(), threading.Event()

    def write() -> None:
        with store._db.write_transaction() as conn:
            conn.execute("CREATE TABLE read_model (x)")
            inside.set()
            release.wait(BOUND)
            conn.execute("INSERT INTO read_model VALUES (1)")

    writer, written = in_thread("writer", write)
    assert inside.wait(BOUND)
    closer, closed = in_thread("closer", store.close)
    deadline = time.monotonic() + BOUND
    while not store._db.closed and time.monotonic() < deadline:
        time.sleep(0.001)
    assert store._db.closed and closer.is_alive()  # close() waits for the transaction
    with pytest.raises(StoreClosed):
        store.append("s", [Deposited(amount=1)])
    release.set()
    writer.join(BOUND)
    closer.join(BOUND)
    assert written == [None] and closed == [None]
    with SqliteEventStore(path) as again:
        rows = again._db.connection().execute("SELECT x FROM read_model").fetchall()
    assert rows == [(1,)]


def test_close_does_not_close_a_connection_another_thread_took(tmp_path: Path) -> None:
    # A projection runner polls the bare connection (connection()) while it
    # waits; close() leaves it to that thread, which closes it at its next call.
    store = SqliteEventStore(tmp_path / "events.db")
    polled, go_on = threading.Event(), threading.Event()

    def poll() -> tuple[str, bool]:
        conn = store._db.connection()
        conn.execute("PRAGMA data_version").fetchone()
        polled.set()
        go_on.wait(BOUND)
        conn.execute("PRAGMA data_version").fetchone()  # after close(): still open
        try:
            store._db.connection()
        except StoreClosed:
            return "closed", store._db._local.handle.closed
        return "open", False

    poller, outcome = in_thread("poller", poll)
    assert polled.wait(BOUND)
    store.close()
    go_on.set()
    poller.join(BOUND)
    assert outcome == [("closed", True)]  # refused, and closed by the thread that took it


# -- :memory: -----------------------------------------------------------------------------


def test_memory_store_is_one_database_for_every_thread() -> None:
    with SqliteEventStore(":memory:") as store:
        thread, outcome = in_thread("other", lambda: store.append("s", [Deposited(amount=1)]))
        thread.join(BOUND)
        assert [r.to_version for r in outcome] == [1]  # type: ignore[attr-defined]
        assert [e.version for e in store.read("s")] == [1]
        with SqliteEventStore(":memory:") as other:
            assert other.get_stream("s") is None  # each store its own database


@pytest.mark.asyncio
async def test_async_memory_store_appends_and_reads() -> None:
    async with AsyncSqliteEventStore(":memory:") as store:
        for i in range(10):
            await store.append(f"s-{i % 3}", [Deposited(amount=i)])
        assert [e.data.amount async for e in store.read_all()] == list(range(10))  # type: ignore[attr-defined]


def test_memory_reader_waits_for_a_write_transaction_then_times_out_naming_it() -> None:
    store = SqliteEventStore(":memory:", busy_timeout=0.2)
    store.append("s", [Deposited(amount=1)])
    inside, release = threading.Event(), threading.Event()

    def write() -> None:
        with store._db.write_transaction() as conn:
            conn.execute("CREATE TABLE m (x)")
            inside.set()
            release.wait(BOUND)

    writer, _ = in_thread("long-writer", write)
    try:
        assert inside.wait(BOUND)
        reader, outcome = in_thread("reader", lambda: list(store.read("s")))
        reader.join(BOUND)
        [error] = outcome
        assert isinstance(error, StoreTimeout)
        assert "'long-writer'" in str(error) and "in-memory" in str(error)
    finally:
        release.set()
        writer.join(BOUND)
    assert [e.version for e in store.read("s")] == [1]
    store.close()


def test_a_projection_follows_a_memory_store_written_by_threads() -> None:
    store = SqliteEventStore(":memory:")

    def setup(ctx: ProjectionContext) -> None:
        ctx.execute("CREATE TABLE IF NOT EXISTS seen (position INTEGER PRIMARY KEY)")

    def handle(ctx: ProjectionContext, event: object) -> None:
        ctx.execute("INSERT INTO seen VALUES (?)", (event.position,))  # type: ignore[attr-defined]

    runner = ProjectionRunner(store, Projection("seen", handle, setup=setup), poll_interval=0.05)
    stop = threading.Event()
    follower, outcome = in_thread("runner", lambda: runner.run(stop))
    writers = [
        in_thread(
            f"w{w}", lambda w=w: [store.append(f"w{w}", [Deposited(amount=i)]) for i in range(50)]
        )
        for w in range(3)
    ]
    for writer, _ in writers:
        writer.join(BOUND)
    deadline = time.monotonic() + BOUND
    while runner.position < store.last_position() and time.monotonic() < deadline:
        time.sleep(0.001)
    stop.set()
    follower.join(BOUND)
    assert outcome == [None]
    with store._db.reading() as conn:
        seen = [row[0] for row in conn.execute("SELECT position FROM seen ORDER BY position")]
    assert seen == [e.position for e in store.read_all()]
    assert len(seen) == 150
    store.close()
