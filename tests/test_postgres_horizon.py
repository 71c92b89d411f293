"""The PostgreSQL log horizon: transactions of other databases never hold readers back.

Each test opens real transactions on the server beside the store (in another
database, in the same database, in the store's own transactions) and checks
what ``read_all``, ``subscribe``, ``last_position``, the backlog and the
holdups diagnostics say while they stay open.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from eventfold import InvalidRequest, NewEvent, RecordedEvent, StreamAppend
from eventfold.projections import Projection, ProjectionRunner
from eventfold.store.postgres import LATEST_SCHEMA_VERSION, PostgresEventStore, migrate
from eventfold.testing import follow_log
from eventfold.testing._events import Deposited
from eventfold.testing._support import within_seconds
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


@pytest.fixture
def prepared(pg_database: str) -> Iterator[list[str]]:
    """Prepared transactions a test left open; rolled back at its end."""
    gids: list[str] = []
    yield gids
    with psycopg.connect(pg_database, autocommit=True) as conn:
        for gid in gids:
            conn.execute(f"ROLLBACK PREPARED '{gid}'")


def prepare(url: str, *statements: str) -> str:
    """Run ``statements`` in a transaction, prepare it (two-phase commit) and
    leave it to nobody; return its global id."""
    with psycopg.connect(url) as conn:
        if conn.execute("SHOW max_prepared_transactions").fetchone() == ("0",):
            message = "the server has prepared transactions off (max_prepared_transactions)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        for statement in statements:
            conn.execute(statement)
        gid = f"eventfold-test-{conn.info.backend_pid}"
        conn.execute(f"PREPARE TRANSACTION '{gid}'")
    return gid


def idle_in_transaction(
    url: str,
    *statements: str,
    name: str,
    isolation: psycopg.IsolationLevel | None = None,
) -> psycopg.Connection:
    """A connection that ran ``statements`` in a transaction it leaves open."""
    conn = psycopg.connect(url, application_name=name)
    conn.isolation_level = isolation
    for statement in statements:
        conn.execute(statement)
    return conn


EVERY_ISOLATION = [
    psycopg.IsolationLevel.READ_COMMITTED,
    psycopg.IsolationLevel.REPEATABLE_READ,
    psycopg.IsolationLevel.SERIALIZABLE,
]
ISOLATION_IDS = ["read-committed", "repeatable-read", "serializable"]


def deposits(store: PostgresEventStore, stream: str, count: int) -> list[int]:
    return [store.append(stream, [Deposited(amount=i)]).position for i in range(count)]


class Rollback(Exception):
    """Raised inside a transaction to roll it back."""


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


def test_transactions_that_never_append_hold_no_reader_back(
    store: PostgresEventStore,
    pg_database: str,
    open_transactions: list[psycopg.Connection],
    prepared: list[str],
) -> None:
    (before,) = deposits(store, "acc", 1)
    events = f"{store.schema}.events"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS side_table (a int)")
    # Each held every reader of the database back before: transactions of the
    # store's database that hold a transaction id but never append.
    open_transactions += [
        idle_in_transaction(
            pg_database, "CREATE TEMP TABLE y (a int)", "INSERT INTO y VALUES (1)", name="batch"
        ),
        idle_in_transaction(pg_database, "SELECT pg_current_xact_id()", name="bare-xid"),
        idle_in_transaction(
            pg_database,
            f"SELECT count(*) FROM {events}",
            "INSERT INTO side_table VALUES (1)",
            name="read-then-wrote",
        ),
        idle_in_transaction(
            pg_database,
            f"SELECT tx FROM {events} LIMIT 1 FOR SHARE",
            "SELECT pg_current_xact_id()",
            name="repeatable-read",
            isolation=psycopg.IsolationLevel.REPEATABLE_READ,
        ),
    ]
    prepared.append(prepare(pg_database, "INSERT INTO side_table VALUES (2)"))
    subscription = store.subscribe(after=before, poll_interval=60)
    later = deposits(store, "acc", 3)
    # Delivered at once (each append notifies), not after the 60 s poll.
    assert within_seconds(1, lambda: [next(subscription).position for _ in later]) == later
    subscription.close()
    assert [e.position for e in store.read_all(after=before)] == later
    assert store.last_position() == later[-1]
    assert store.checkpoints().backlog(later[-1]) == (0, None)
    assert store.holdups() == []


@pytest.mark.parametrize("isolation", EVERY_ISOLATION, ids=ISOLATION_IDS)
def test_a_transaction_that_wrote_before_joining_the_store_cannot_append(
    store: PostgresEventStore, pg_database: str, isolation: psycopg.IsolationLevel
) -> None:
    (before,) = deposits(store, "acc", 1)
    with psycopg.connect(pg_database, application_name="orders") as conn:
        conn.isolation_level = isolation
        conn.execute("CREATE TEMP TABLE orders (id int)")
        conn.commit()
        conn.execute("INSERT INTO orders VALUES (1)")  # a transaction id, not claimed
        later = deposits(store, "acc", 2)
        # It holds nobody back, so readers pass its id: it must not append below them.
        assert [e.position for e in store.read_all(after=before)] == later
        with (
            pytest.raises(InvalidRequest, match="before the transaction's first write"),
            store.transaction(connection=conn) as tx,
        ):
            tx.append("order-1", [Deposited(amount=1)])
        conn.rollback()
    assert store.get_stream("order-1") is None
    assert store.holdups() == []


@pytest.mark.parametrize("isolation", EVERY_ISOLATION, ids=ISOLATION_IDS)
def test_a_transaction_that_joined_first_holds_readers_back_from_its_first_write(
    store: PostgresEventStore, pg_database: str, isolation: psycopg.IsolationLevel
) -> None:
    (before,) = deposits(store, "acc", 1)
    with psycopg.connect(pg_database, application_name="orders") as conn:
        conn.isolation_level = isolation
        conn.execute("CREATE TEMP TABLE orders (id int)")
        conn.commit()
        with store.transaction(connection=conn) as tx:
            assert list(store.read_all(after=before)) == []
            conn.execute("INSERT INTO orders VALUES (1)")  # it may append: readers wait
            later = deposits(store, "acc", 2)
            assert list(store.read_all(after=before)) == []
            (holdup,) = store.holdups()
            assert (holdup.pid, holdup.application_name) == (conn.info.backend_pid, "orders")
            first = tx.append("order-1", [Deposited(amount=1)])
            second = tx.append("order-1", [Deposited(amount=2), Deposited(amount=3)])
            assert store.last_position() == before  # never moved back, never forward
    inside = [first.position, *second.positions]
    assert sorted(inside) == inside
    log = [(e.stream, e.version, e.position) for e in store.read_all(after=before)]
    assert [p for _, _, p in log] == sorted(p for _, _, p in log)
    assert {p for _, _, p in log} == {*later, *inside}
    assert [v for s, v, _ in log if s == "order-1"] == [1, 2, 3]
    if isolation == psycopg.IsolationLevel.READ_COMMITTED:
        # Its appends see the newer events and come after them.
        assert min(inside) > later[-1]
    assert store.holdups() == []


def test_an_append_rolled_back_to_a_savepoint_stops_holding_readers_back(
    store: PostgresEventStore, pg_database: str
) -> None:
    (before,) = deposits(store, "acc", 1)
    with psycopg.connect(pg_database) as conn:
        conn.execute("SELECT 1")  # the application's transaction, open, no id yet
        with pytest.raises(Rollback), store.transaction(connection=conn) as tx:
            tx.append("order-1", [Deposited(amount=1)])
            raise Rollback
        # The savepoint took the rows, the lock and the claim with it: readers go on.
        later = deposits(store, "acc", 1)
        assert [e.position for e in store.read_all(after=before)] == later
        # The transaction kept its id, which readers passed: it appends no more.
        with (
            pytest.raises(InvalidRequest, match="before the transaction's first write"),
            store.transaction(connection=conn) as tx,
        ):
            tx.append("order-1", [Deposited(amount=2)])
        conn.commit()
    assert store.get_stream("order-1") is None


def test_a_prepared_transaction_holds_readers_back_only_if_it_appended(
    store: PostgresEventStore, pg_database: str, prepared: list[str]
) -> None:
    (before,) = deposits(store, "acc", 1)
    conn = psycopg.connect(pg_database)
    conn.execute("SELECT 1")  # the application's transaction, which it then prepares
    # A transaction that notified cannot be prepared: a store without NOTIFY.
    with (
        PostgresEventStore(pg_database, schema=store.schema, notify=False) as quiet,
        quiet.transaction(connection=conn) as tx,
    ):
        pending = tx.append("two-phase", [Deposited(amount=1)])
    gid = f"eventfold-test-{conn.info.backend_pid}"
    conn.execute(f"PREPARE TRANSACTION '{gid}'")  # nobody holds it now
    prepared.append(gid)
    conn.close()
    later = deposits(store, "acc", 2)
    assert list(store.read_all(after=before)) == []
    (holdup,) = store.holdups()
    assert (holdup.state, holdup.gid) == ("prepared", gid)
    with psycopg.connect(pg_database, autocommit=True) as admin:
        admin.execute(f"COMMIT PREPARED '{gid}'")
    prepared.remove(gid)
    assert [e.position for e in store.read_all(after=before)] == [pending.position, *later]
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


def test_a_store_transaction_holds_readers_back_from_its_first_write(
    store: PostgresEventStore,
) -> None:
    (before,) = deposits(store, "acc", 1)
    with store.transaction() as tx:
        tx.execute("CREATE TEMP TABLE orders (id int)")
        tx.execute("INSERT INTO orders VALUES (?)", (1,))
        later = deposits(store, "acc", 1)
        assert list(store.read_all(after=before)) == []  # it may still append
        inside = tx.append("order-1", [Deposited(amount=1)])
        assert store.last_position() == before
    # Its append saw the newer event and comes after it.
    assert [e.position for e in store.read_all(after=before)] == [*later, inside.position]


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


def test_a_sql_read_model_that_hangs_after_writing_holds_no_other_reader_back(
    store: PostgresEventStore,
) -> None:
    (before,) = deposits(store, "acc", 1)
    wrote, release = threading.Event(), threading.Event()

    def handle(ctx: Any, event: RecordedEvent) -> None:
        ctx.execute("INSERT INTO balances VALUES (?, ?)", (event.stream, event.version))
        wrote.set()
        release.wait(30)  # a handler stuck on something, its transaction open

    projection = Projection(
        "balances",
        handle,
        setup=lambda ctx: ctx.execute("CREATE TABLE balances (stream text, version bigint)"),
    )
    runner = ProjectionRunner(store, projection)
    worker = threading.Thread(target=runner.run_once)
    worker.start()
    try:
        assert wrote.wait(30)
        later = deposits(store, "acc", 2)
        # Its transaction wrote the read model and the checkpoint, not events.
        assert [e.position for e in store.read_all(after=before)] == later
        subscription = store.subscribe(after=before, poll_interval=60)
        assert [next(subscription).position for _ in later] == later
        subscription.close()
        assert store.holdups() == []
    finally:
        release.set()
        worker.join(30)
    assert runner.status().position == later[-1]


# -- under load: mixed writers, unrelated transactions, tailing readers ------------------

CTX = multiprocessing.get_context("spawn")
ISOLATIONS = (psycopg.IsolationLevel.READ_COMMITTED, psycopg.IsolationLevel.REPEATABLE_READ)
WRITERS = 4
APPENDS = 80


def _writer(url: str, schema: str, writer: int, acks: Any) -> None:
    """Every way to append, in turn, each reporting the ids of what committed:
    autocommit appends; store transactions that write another table first
    (some rolled back); multi-stream appends; the application's own
    transactions at READ COMMITTED and REPEATABLE READ after their own writes
    (some rolled back); an append rolled back to a savepoint, then another."""
    try:
        with (
            PostgresEventStore(url, schema=schema, max_size=2) as store,
            psycopg.connect(url, application_name=f"app-{writer}") as app,
        ):
            for i in range(APPENDS):
                stream = f"w{writer}-{i % 4}"
                batch = [NewEvent(data=Deposited(amount=i)) for _ in range(1 + i % 2)]
                committed = batch
                kind = i % 6
                try:
                    if kind in (0, 4):
                        store.append(stream, batch)
                    elif kind == 1:
                        with store.transaction() as tx:
                            tx.execute("CREATE TEMP TABLE IF NOT EXISTS outbox (n int)")
                            tx.execute("INSERT INTO outbox VALUES (?)", (i,))
                            tx.append(stream, batch)
                            if i % 4 == 1:
                                raise Rollback
                    elif kind == 2:
                        other = [NewEvent(data=Deposited(amount=-i))]
                        store.append_many(
                            [StreamAppend(stream, batch), StreamAppend(f"w{writer}-m", other)]
                        )
                        committed = batch + other
                    elif kind == 3:
                        app.isolation_level = ISOLATIONS[(i // 6) % 2]
                        app.execute("CREATE TEMP TABLE IF NOT EXISTS orders (n int)")
                        app.commit()
                        app.execute("SELECT 1")  # its own transaction: the block joins it
                        with store.transaction(connection=app) as tx:
                            app.execute("INSERT INTO orders VALUES (%s)", (i,))
                            tx.append(stream, batch)
                        if i % 4 == 3:
                            app.rollback()
                            raise Rollback
                        app.commit()
                    else:
                        with store.transaction() as tx:
                            tx.execute("CREATE TEMP TABLE IF NOT EXISTS outbox (n int)")
                            tx.execute("INSERT INTO outbox VALUES (?)", (i,))
                            with pytest.raises(Rollback), tx.connection.transaction():
                                tx.append(stream, [NewEvent(data=Deposited(amount=0))])
                                raise Rollback
                            tx.append(stream, batch)
                except Rollback:
                    continue
                acks.put((writer, [e.id.hex for e in committed]))
    except BaseException as exc:
        acks.put((writer, f"writer {writer} died: {exc!r}"))
        raise
    acks.put((writer, None))


def _committed_per_writer() -> int:
    """How many events one _writer commits."""
    total = 0
    for i in range(APPENDS):
        kind = i % 6
        if (kind == 1 and i % 4 == 1) or (kind == 3 and i % 4 == 3):
            continue
        total += 1 + i % 2 + (kind == 2)
    return total


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
    assert len(acked) == WRITERS * _committed_per_writer()
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
    assert {event_id.hex for event_id, _ in final} == acked
    # A multi-stream append is one transaction: both events share its tx, so no
    # reader can see one without the other.
    with PostgresEventStore(pg_database, schema=schema) as store:
        log = list(store.read_all())
    paired = [e for e in log if e.stream.endswith("-m")]
    assert len(paired) == WRITERS * sum(1 for i in range(APPENDS) if i % 6 == 2)
    by_amount = {(e.stream.split("-")[0], e.data.amount): e for e in log if e not in paired}
    for event in paired:
        partner = by_amount[(event.stream.split("-")[0], -event.data.amount)]
        assert partner.position >> 64 == event.position >> 64, (partner, event)
