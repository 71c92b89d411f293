"""The PostgreSQL log horizon: transactions of other databases never hold readers back.

Each test opens real transactions on the server beside the store (in another
database, in the same database, in the store's own transactions) and checks
what ``read_all``, ``subscribe``, ``last_position``, the backlog and the
holdups diagnostics say while they stay open.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from eventfold import NewEvent, RecordedEvent
from eventfold.projections import Projection, ProjectionRunner
from eventfold.store.postgres import LATEST_SCHEMA_VERSION, PostgresEventStore, migrate
from eventfold.testing import follow_log
from eventfold.testing._events import Deposited
from tests.support.pg import ADMIN_URL, new_schema_name


@pytest.fixture
def store(pg_database: str) -> Iterator[PostgresEventStore]:
    schema = new_schema_name()
    assert migrate(pg_database, schema=schema) == LATEST_SCHEMA_VERSION
    with PostgresEventStore(pg_database, schema=schema, holdup_warning=0.1) as store:
        yield store


@pytest.fixture
def open_transactions(pg_database: str) -> Iterator[list[psycopg.Connection]]:
    """Connections left idle in transaction by a test; rolled back at its end."""
    opened: list[psycopg.Connection] = []
    yield opened
    for conn in opened:
        conn.rollback()
        conn.close()


def idle_in_transaction(url: str, *statements: str, name: str) -> psycopg.Connection:
    """A connection that ran ``statements`` in a transaction it leaves open."""
    conn = psycopg.connect(url, application_name=name)
    for statement in statements:
        conn.execute(statement)
    return conn


def deposits(store: PostgresEventStore, stream: str, count: int) -> list[int]:
    return [store.append(stream, [Deposited(amount=i)]).position for i in range(count)]


def test_transactions_of_other_databases_hold_no_reader_back(
    store: PostgresEventStore, open_transactions: list[psycopg.Connection]
) -> None:
    first = deposits(store, "acc", 1)
    # Both held every reader of the server back before: a write in another
    # database, and a bare transaction id taken there.
    open_transactions += [
        idle_in_transaction(
            ADMIN_URL,
            "CREATE TEMP TABLE x (a int)",
            "INSERT INTO x VALUES (1)",
            name="other-database",
        ),
        idle_in_transaction(ADMIN_URL, "SELECT pg_current_xact_id()", name="bare-xid"),
    ]
    later = deposits(store, "acc", 5)
    assert [e.position for e in store.read_all()] == first + later
    assert store.last_position() == later[-1]
    subscription = store.subscribe(after=first[0], poll_interval=60)
    assert [next(subscription).position for _ in later] == later
    subscription.close()
    assert store.checkpoints().backlog(later[-1]) == (0, None)
    assert store.holdups() == []


def test_a_write_transaction_of_the_same_database_holds_readers_back_and_is_named(
    store: PostgresEventStore, pg_database: str, open_transactions: list[psycopg.Connection]
) -> None:
    (before,) = deposits(store, "acc", 1)
    blocker = idle_in_transaction(
        pg_database, "CREATE TEMP TABLE y (a int)", "INSERT INTO y VALUES (1)", name="batch-job"
    )
    open_transactions.append(blocker)
    later = deposits(store, "acc", 2)
    # It could still append to this store: readers wait for it, and say who it is.
    assert list(store.read_all(after=before)) == []
    assert store.checkpoints().backlog(before)[0] == 2
    (holdup,) = store.holdups()
    assert (holdup.pid, holdup.application_name) == (blocker.info.backend_pid, "batch-job")
    assert holdup.state == "idle in transaction"
    assert "batch-job" in holdup.describe()
    blocker.rollback()
    assert [e.position for e in store.read_all(after=before)] == later
    assert store.holdups() == []


def test_an_open_transaction_of_the_store_holds_readers_back_until_it_ends(
    store: PostgresEventStore,
) -> None:
    (before,) = deposits(store, "acc", 1)
    with store.transaction() as tx:
        inside = tx.append("tx", [Deposited(amount=1)])
        after = deposits(store, "acc", 3)
        # Committed, yet behind a transaction that may still add events before them.
        assert list(store.read_all(after=before)) == []
        assert store.last_position() == before
        assert store.checkpoints().backlog(before)[0] == 3  # the true lag
        (holdup,) = store.holdups()
        assert holdup.pid == tx.connection.info.backend_pid
        assert holdup.state == "idle in transaction"
        assert holdup.database == tx.connection.info.dbname
        assert "pid" in holdup.describe()
    events = list(store.read_all(after=before))
    assert [e.position for e in events] == [inside.position, *after]
    assert store.holdups() == []


def test_a_rolled_back_transaction_leaves_no_trace_and_no_hold(store: PostgresEventStore) -> None:
    (before,) = deposits(store, "acc", 1)
    with pytest.raises(RuntimeError, match="changed my mind"), store.transaction() as tx:
        tx.append("tx", [Deposited(amount=1)])
        deposits(store, "acc", 2)
        raise RuntimeError("changed my mind")
    events = list(store.read_all(after=before))
    assert [e.stream for e in events] == ["acc", "acc"]
    assert store.get_stream("tx") is None


def test_a_store_transaction_that_wrote_holds_readers_back_even_before_it_appends(
    store: PostgresEventStore,
) -> None:
    (before,) = deposits(store, "acc", 1)
    with store.transaction() as tx:
        tx.execute("CREATE TEMP TABLE orders (id int)")
        tx.execute("INSERT INTO orders VALUES (?)", (1,))
        later = deposits(store, "acc", 1)
        assert list(store.read_all(after=before)) == []  # it may still append
        inside = tx.append("order-1", [Deposited(amount=1)])
    assert [e.position for e in store.read_all(after=before)] == [inside.position, *later]


def test_a_held_back_projection_shows_its_true_lag_and_who_holds_it(
    store: PostgresEventStore, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[RecordedEvent] = []
    runner = ProjectionRunner(store, Projection("counter", lambda ctx, e: seen.append(e)))
    deposits(store, "acc", 2)
    runner.run_once()
    with store.transaction() as tx:
        tx.append("tx", [Deposited(amount=1)])
        deposits(store, "acc", 3)
        runner.run_once()
        status = runner.status()
        assert status.lag_events == 3  # committed, all waiting behind the open one
        (holdup,) = status.held_back_by
        assert holdup.pid == tx.connection.info.backend_pid
        # A reader at the end of the log warns once the same horizon has held
        # it back for holdup_warning seconds (0.1 s here); it checks at most
        # once a second.
        caplog.set_level(logging.WARNING, logger="eventfold.store")
        warned = threading.Event()
        for _ in range(40):
            list(store.read_all(after=store.last_position()))
            if any("held back" in r.getMessage() for r in caplog.records):
                warned.set()
                break
            warned.wait(0.1)
        assert warned.is_set(), "no warning named the holdup"
        message = next(r.getMessage() for r in caplog.records if "held back" in r.getMessage())
        assert f"pid {holdup.pid}" in message
    runner.run_once()
    assert len(seen) == 6
    assert runner.status().lag_events == 0
    assert runner.status().held_back_by == ()


# -- under load: mixed writers, unrelated transactions, tailing readers ------------------

CTX = multiprocessing.get_context("spawn")
WRITERS = 4
APPENDS = 80


class Rollback(Exception):
    """Raised inside a transaction to roll it back."""


def _writer(url: str, schema: str, writer: int, acks: Any) -> None:
    """Autocommit appends, and appends inside store transactions beside other writes
    (every fourth one rolled back); report the ids of what committed."""
    try:
        with PostgresEventStore(url, schema=schema, max_size=2) as store:
            for i in range(APPENDS):
                stream = f"w{writer}-{i % 4}"
                batch = [NewEvent(data=Deposited(amount=i)) for _ in range(1 + i % 2)]
                if i % 3:
                    store.append(stream, batch)
                    acks.put((writer, [e.id.hex for e in batch]))
                    continue
                try:
                    with store.transaction() as tx:
                        tx.execute("CREATE TEMP TABLE IF NOT EXISTS outbox (n int)")
                        tx.execute("INSERT INTO outbox VALUES (?)", (i,))
                        tx.append(stream, batch)
                        if i % 4 == 0:
                            raise Rollback
                except Rollback:
                    continue
                acks.put((writer, [e.id.hex for e in batch]))
    except BaseException as exc:
        acks.put((writer, f"writer {writer} died: {exc!r}"))
        raise
    acks.put((writer, None))


def _disturb(urls: list[str], done: threading.Event, opened: list[int]) -> None:
    """Open and close unrelated write transactions until ``done``: each holds a
    transaction id in another database or on another table while appends go on."""
    conns = [psycopg.connect(url, application_name="disturber") for url in urls]
    try:
        n = 0
        while not done.is_set():
            conn = conns[n % len(conns)]
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS unrelated (a int)")
            conn.execute("INSERT INTO unrelated VALUES (%s)", (n,))
            opened.append(n)
            done.wait(0.02)  # the shape of the load: held open while appends go on
            conn.rollback()
            n += 1
    finally:
        for conn in conns:
            conn.close()


def test_tailing_readers_get_every_committed_event_once_among_unrelated_transactions(
    pg_database: str,
) -> None:
    schema = new_schema_name()
    migrate(pg_database, schema=schema)
    acks = CTX.Queue()
    done = threading.Event()  # readers: the writers are done and the disturber stopped
    quiet = threading.Event()  # the disturber: stop
    seen: list[list[RecordedEvent]] = [[], []]
    failures: list[BaseException] = []
    opened: list[int] = []

    def reader(n: int) -> None:
        try:
            with PostgresEventStore(pg_database, schema=schema, max_size=1, page_size=5) as s:
                seen[n].extend(follow_log(s, done.is_set, limit=9, idle=lambda: done.wait(0.005)))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(2)]
    urls = [ADMIN_URL, pg_database]
    disturber = threading.Thread(target=_disturb, args=(urls, quiet, opened))
    threads.append(disturber)
    procs = [
        CTX.Process(target=_writer, args=(pg_database, schema, w, acks)) for w in range(WRITERS)
    ]
    for thread in threads:
        thread.start()
    for proc in procs:
        proc.start()
    acked: set[str] = set()
    try:
        running = WRITERS
        while running:
            _, ids = acks.get(timeout=120)
            assert not isinstance(ids, str), ids
            if ids is None:
                running -= 1
            else:
                acked.update(ids)
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
    finally:
        # A transaction that ends while a reader computes its horizon counts for
        # that one read (it might have appended): stop the disturber before the
        # readers' last read, which must then find everything.
        quiet.set()
        disturber.join(60)
        done.set()
        for thread in threads:
            thread.join(60)
    assert failures == []
    assert len(opened) > 10  # unrelated transactions came and went throughout
    committed = WRITERS * sum(1 + i % 2 for i in range(APPENDS) if i % 3 or i % 4)
    assert len(acked) == committed
    with PostgresEventStore(pg_database, schema=schema) as store:
        final = [(e.id, e.position) for e in store.read_all()]
    for sequence in seen:
        ids = [e.id.hex for e in sequence]
        assert len(ids) == len(set(ids)), "an event was delivered twice"
        assert set(ids) == acked, "a reader missed events or saw rolled-back ones"
        assert [(e.id, e.position) for e in sequence] == final
        for stream in {e.stream for e in sequence}:
            versions = [e.version for e in sequence if e.stream == stream]
            assert versions == list(range(1, len(versions) + 1)), stream
