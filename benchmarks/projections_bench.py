"""Projection benchmark: catch-up rate and live latency of read models, same run.

Run with ``python -m benchmarks projections [--quick] [--json PATH] [--conninfo URL]``.
A log of events in many streams is written once per contender (setup, untimed);
then each contender rebuilds a read model (the balance of every stream) from
position 0, into a dict in memory and into a table of the same database, on
SQLite and on PostgreSQL. Contenders: a raw driver loop, the ``eventsourcing``
package's projections (9.5.6) and eventfold's ``ProjectionRunner``. Last, the
latency from an append to the read model's update while a runner follows the
log live. See ``benchmarks/README.md`` for what each contender does.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from benchmarks._common import (
    DEPOSITED_TYPE,
    ES_DEPOSITED,
    OPENED_TYPE,
    PAGE_SIZE,
    Deposited,
    EsAccount,
    EsBank,
    Opened,
    add_common_arguments,
    es_sqlite_env,
    finish,
    pages,
    suite_main,
)
from benchmarks._harness import (
    Measurement,
    latency_ratios,
    latency_record,
    print_latency_table,
    print_table,
    ratios,
    record,
    rotated,
    split,
    system_info,
)
from benchmarks._postgres import (
    RAW_INSERT,
    RAW_SCHEMA,
    add_conninfo_argument,
    conninfo,
    create_schemas,
    es_env,
    psycopg,
    schema_url,
    scratch_database,
    sql,
)
from benchmarks.sqlite_bench import RawStore, _checkpoint

try:
    from eventsourcing.persistence import InfrastructureFactory, Tracking
    from eventsourcing.popo import POPOTrackingRecorder
    from eventsourcing.postgres import PostgresTrackingRecorder
    from eventsourcing.projection import Projection as EsProjection
    from eventsourcing.projection import ProjectionRunner as EsProjectionRunner
    from eventsourcing.sqlite import SQLiteTrackingRecorder
    from eventsourcing.utils import Environment
except ImportError as exc:  # pragma: no cover
    raise SystemExit(
        "the projections benchmark compares against eventsourcing==9.5.6: "
        "pip install 'eventfold[bench]'"
    ) from exc

import eventfold
from eventfold import AsyncSqliteEventStore, SqliteEventStore
from eventfold.projections import (
    AsyncProjectionRunner,
    Projection,
    ProjectionContext,
    ProjectionRunner,
)
from eventfold.store import AsyncEventStore
from eventfold.store.postgres import AsyncPostgresEventStore, PostgresEventStore, migrate

RAW_SQLITE, RAW_PG, ES, EF = "raw-sqlite3", "raw-psycopg", "eventsourcing", "eventfold"
EF_WAIT = "eventfold, append + wait_for"
EF_ASYNC = "eventfold async runner"
EF_SUB = "eventfold subscribe()"
EF_ASYNC_SUB = "eventfold async subscribe()"
BATCH = PAGE_SIZE  # eventfold's default batch_size; raw and eventsourcing (its select limit) alike
CHUNK = 20  # events per stream per append while writing the log (streams interleave)
LATENCY_GAP_S = 0.002  # the live writer sleeps this long after each append
PHASE_WARMUP = 5  # events each consumer handles, unmeasured, after it starts
WAIT_S = 600.0  # a catch-up or a live round that takes longer than this has failed


@dataclass(frozen=True)
class Counts:
    streams: int
    events_per_stream: int  # 1 "opened", then deposits
    memory_passes: int  # timed catch-ups per contender into the in-memory read model
    sql_passes: int  # ... into the SQL read model
    es_sql_passes: int  # eventsourcing's SQL read model commits per event: fewer passes
    latency_samples: int  # live samples per contender, after the warm-up
    latency_warmup: int
    latency_rounds: int

    @property
    def events(self) -> int:
        return self.streams * self.events_per_stream


FULL_COUNTS = Counts(
    streams=500,
    events_per_stream=100,
    memory_passes=9,  # short passes (~50 ms): more of them against bursts of noise
    sql_passes=3,
    es_sql_passes=2,
    latency_samples=1_000,
    latency_warmup=50,
    latency_rounds=5,
)
QUICK_COUNTS = Counts(
    streams=100,
    events_per_stream=50,
    memory_passes=2,
    sql_passes=2,
    es_sql_passes=1,
    latency_samples=150,
    latency_warmup=20,
    latency_rounds=3,
)

_decode = msgspec.json.decode
_encode = msgspec.json.encode


# -- the log: the same events, in the same order, for every contender ---------------------


def amount(stream: int, version: int) -> int:
    """The deposit of ``version`` (>= 2) of stream number ``stream``."""
    return (stream * 7 + version) % 100 + 1


def log_order(counts: Counts) -> Iterator[tuple[int, range]]:
    """(stream number, versions) chunks in log order: CHUNK events per stream, round robin."""
    for first in range(1, counts.events_per_stream + 1, CHUNK):
        last = min(first + CHUNK, counts.events_per_stream + 1)
        for s in range(counts.streams):
            yield s, range(first, last)


def stream_name(s: int) -> str:
    return f"acc-{s}"


def expected_balances(counts: Counts) -> dict[int, int]:
    return {
        s: sum(amount(s, v) for v in range(2, counts.events_per_stream + 1))
        for s in range(counts.streams)
    }


# -- eventsourcing: a Projection and its views (tracking recorders) -----------------------


class EsMemoryView(POPOTrackingRecorder):
    """eventsourcing's in-memory tracking recorder plus a dict of balances."""

    def __init__(self) -> None:
        super().__init__()
        self.balances: dict[uuid.UUID, int] = {}

    def add(self, account: uuid.UUID, amount: int, tracking: Tracking) -> None:
        with self._database_lock:
            self._assert_tracking_uniqueness(tracking)
            self.balances[account] = self.balances.get(account, 0) + amount
            self._insert_tracking(tracking)


ES_SQLITE_UPSERT = (
    "INSERT INTO es_balances (account, balance) VALUES (?, ?) ON CONFLICT (account) "
    "DO UPDATE SET balance = es_balances.balance + excluded.balance"
)


class EsSqliteView(SQLiteTrackingRecorder):
    """eventsourcing's SQLite tracking recorder plus a balances table: one transaction
    per event holds the upsert and the tracking record."""

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            "CREATE TABLE IF NOT EXISTS es_balances (account TEXT PRIMARY KEY, balance INTEGER)",
        ]

    def add(self, account: uuid.UUID, amount: int, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(ES_SQLITE_UPSERT, (account.hex, amount))
            self._insert_tracking(c, tracking)


class EsPostgresView(PostgresTrackingRecorder):
    """eventsourcing's PostgreSQL tracking recorder plus a balances table (in its schema)."""

    def __init__(self, datastore: Any, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        schema = sql.Identifier(self.datastore.schema)
        self.sql_create_statements.append(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {0}.es_balances (account uuid PRIMARY KEY, balance bigint)"
            ).format(schema)
        )
        self.upsert = sql.SQL(
            "INSERT INTO {0}.es_balances (account, balance) VALUES (%s, %s) "
            "ON CONFLICT (account) DO UPDATE SET balance = {0}.es_balances.balance + excluded.balance"
        ).format(schema)

    def add(self, account: uuid.UUID, amount: int, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(self.upsert, (account, amount), prepare=True)
            self._insert_tracking(curs, tracking)


class EsBalances(EsProjection[Any]):
    """Balance per aggregate. ``done`` is set once ``target`` is processed, so the
    benchmark sees the end of a catch-up at once (eventsourcing's ``wait()`` polls
    with a back-off of 100-800 ms). ``received`` collects (amount, time) for the
    live latency scenario."""

    name = "balances"
    target = 0
    done = threading.Event()
    received: list[tuple[int, int]] | None = None

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        is_deposit = type(domain_event) is ES_DEPOSITED
        self.view.add(
            domain_event.originator_id, domain_event.amount if is_deposit else 0, tracking
        )
        if self.received is not None and is_deposit:
            self.received.append((domain_event.amount, time.perf_counter_ns()))
        if tracking.notification_id >= self.target:
            self.done.set()


class EsMemoryBalances(EsBalances):
    name = "balances_memory"


class EsSqlBalances(EsBalances):
    name = "balances_sql"


class EsLiveBalances(EsBalances):
    name = "balances_live"


def es_pull(app: EsBank, projection: EsBalances, view: Any) -> None:
    """eventsourcing's ProjectionRunner loop without its subscription, which the
    SQLite recorder of 9.5.6 does not offer: the same select_notifications pages
    of 500 (ListenNotifySubscription._pull), mapper.to_domain_event and Tracking
    (ApplicationSubscription.__next__), process_event per event; in one thread."""
    name = app.name
    select = app.recorder.select_notifications
    to_domain_event = app.mapper.to_domain_event
    process = projection.process_event
    after = view.max_tracking_id(name) or 0
    while True:
        notifications = select(start=after, limit=BATCH, inclusive_of_start=False)
        for n in notifications:
            process(to_domain_event(n), Tracking(name, n.id))
        if len(notifications) < BATCH:
            return
        after = notifications[-1].id


def es_factory(name: str, env: dict[str, str]) -> Any:
    """The infrastructure factory eventsourcing's ProjectionRunner builds a view with."""
    return InfrastructureFactory.construct(env=Environment(name, env))


# -- contenders of a catch-up scenario ------------------------------------------------------


@dataclass
class Contender:
    """``prepare`` (untimed) resets the read model, ``run`` (timed) catches up from
    position 0, ``finish`` (untimed) stops what ``run`` started and returns the
    read model as {stream number: balance}, which must equal the expected one."""

    run: Callable[[], None]
    finish: Callable[[], dict[int, int]]
    prepare: Callable[[], None] = lambda: None
    passes: int = 1


def catch_up(
    title: str, events: int, contenders: dict[str, Contender], expected: dict[int, int]
) -> dict[str, Measurement]:
    """Interleaved rounds with rotating order; each pass timed on its own, checked after."""
    results = {name: Measurement(title, "-", name, events) for name in contenders}
    names = list(contenders)
    clock = time.perf_counter_ns
    for round_index in range(max(c.passes for c in contenders.values())):
        for name in rotated(names, round_index):
            contender = contenders[name]
            if round_index >= contender.passes:
                continue
            contender.prepare()
            gc.collect()
            start = clock()
            contender.run()
            elapsed = clock() - start
            if contender.finish() != expected:
                raise RuntimeError(f"{title}: {name} built a different read model")
            results[name].latencies_ns.append(elapsed)
    return results


# -- eventfold handlers ---------------------------------------------------------------------

EF_UPSERT = (
    "INSERT INTO ef_balances (account, balance) VALUES (?, ?) ON CONFLICT (account) "
    "DO UPDATE SET balance = ef_balances.balance + excluded.balance"
)


#: The async runner's table (its own: two setups racing on one CREATE TABLE can fail).
ASYNC_UPSERT = EF_UPSERT.replace("ef_balances", "ef_async_balances")


def ef_setup(ctx: ProjectionContext) -> None:
    ctx.execute("CREATE TABLE IF NOT EXISTS ef_balances (account TEXT PRIMARY KEY, balance BIGINT)")


def ef_sql_handle(ctx: ProjectionContext, event: Any) -> None:
    data = event.data
    ctx.execute(EF_UPSERT, (event.stream, data.amount if type(data) is Deposited else 0))


def ef_memory_contender(store: Any, passes: int, events: int) -> Contender:
    balances: dict[str, int] = {}

    def handle(ctx: ProjectionContext, event: Any) -> None:
        data = event.data
        stream = event.stream
        balances[stream] = balances.get(stream, 0) + (data.amount if type(data) is Deposited else 0)

    projection = Projection("balances-memory", handle, in_memory=True)

    def run() -> None:
        handled = ProjectionRunner(store, projection).run_once()
        if handled != events:
            raise RuntimeError(f"eventfold handled {handled} events, not {events}")

    return Contender(run, lambda: _by_number(balances), balances.clear, passes)


def ef_async_memory_contender(
    open_async: Callable[[], AsyncEventStore], passes: int, events: int, stack: ExitStack
) -> Contender:
    """The async runner into the same in-memory read model: one event loop (an
    ``asyncio.Runner`` kept across passes) on an async store of the same database."""
    loop = stack.enter_context(asyncio.Runner())
    astore = open_async()
    stack.callback(lambda: loop.run(astore.close()))
    balances: dict[str, int] = {}

    def handle(ctx: ProjectionContext, event: Any) -> None:
        data = event.data
        stream = event.stream
        balances[stream] = balances.get(stream, 0) + (data.amount if type(data) is Deposited else 0)

    projection = Projection("balances-memory-async", handle, in_memory=True)

    def run() -> None:
        handled = loop.run(AsyncProjectionRunner(astore, projection).run_once())
        if handled != events:
            raise RuntimeError(f"eventfold (async) handled {handled} events, not {events}")

    return Contender(run, lambda: _by_number(balances), balances.clear, passes)


def ef_sql_contender(store: Any, passes: int, events: int, db: Callable[[], Any]) -> Contender:
    """``db()`` opens a plain connection to the store's database (resets and checks)."""
    n = 0

    def prepare() -> None:
        nonlocal n
        n += 1  # a fresh projection name: its checkpoint starts at 0
        with db() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS ef_balances (account TEXT PRIMARY KEY, balance BIGINT)"
            )
            conn.execute("DELETE FROM ef_balances")

    def run() -> None:
        projection = Projection(f"balances-{n}", ef_sql_handle, setup=ef_setup)
        handled = ProjectionRunner(store, projection).run_once()
        if handled != events:
            raise RuntimeError(f"eventfold handled {handled} events, not {events}")

    def finish() -> dict[int, int]:
        with db() as conn:
            return _by_number(dict(conn.execute("SELECT account, balance FROM ef_balances")))

    return Contender(run, finish, prepare, passes)


def _by_number(balances: dict[str, int]) -> dict[int, int]:
    return {int(stream.rsplit("-", 1)[1]): balance for stream, balance in balances.items()}


def _by_es_id(balances: dict[Any, int], es_ids: list[uuid.UUID]) -> dict[int, int]:
    number = {account: s for s, account in enumerate(es_ids)}
    number.update({account.hex: s for s, account in enumerate(es_ids)})
    return {number[account]: balance for account, balance in balances.items()}


# -- writing the log (setup) ------------------------------------------------------------------


def write_es_log(app: EsBank, counts: Counts) -> list[uuid.UUID]:
    accounts = [EsAccount() for _ in range(counts.streams)]
    pending: list[EsAccount] = []
    for s, versions in log_order(counts):
        account = accounts[s]
        for v in versions:
            if v > 1:
                account.deposit(amount(s, v))
        pending.append(account)
        if len(pending) * CHUNK >= BATCH:
            app.save(*pending)
            pending.clear()
    if pending:
        app.save(*pending)
    return [a.id for a in accounts]


def write_ef_log(store: Any, counts: Counts) -> None:
    for s, versions in log_order(counts):
        store.append(
            stream_name(s),
            [Opened() if v == 1 else Deposited(amount=amount(s, v)) for v in versions],
            expected=versions[0] - 1,
        )


def raw_log_rows(counts: Counts) -> Iterator[tuple[str, int, str, bytes]]:
    """(stream, version, type, data) in log order."""
    for s, versions in log_order(counts):
        for v in versions:
            if v == 1:
                yield stream_name(s), v, OPENED_TYPE, _encode({})
            else:
                yield stream_name(s), v, DEPOSITED_TYPE, _encode({"amount": amount(s, v)})


# -- the raw contenders: the same loops on sqlite3 and psycopg ----------------------------

RAW_PAGE = (
    "SELECT position, stream, type, data FROM events WHERE position > ? ORDER BY position LIMIT ?"
)
RAW_UPSERT = (
    "INSERT INTO raw_balances (account, balance) VALUES (?, ?) ON CONFLICT (account) "
    "DO UPDATE SET balance = raw_balances.balance + excluded.balance"
)
RAW_CHECKPOINT = (
    "INSERT INTO raw_checkpoint (name, position) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET position = excluded.position"
)
RAW_READ_CHECKPOINT = "SELECT position FROM raw_checkpoint WHERE name = ?"


def pg(statement: str) -> str:
    """The same statement with psycopg's placeholders."""
    return statement.replace("?", "%s")


def raw_memory_contender(run_pass: Callable[[dict[str, int]], None], passes: int) -> Contender:
    """``run_pass(balances)`` reads the log in pages (:func:`raw_memory_pass`)."""
    balances: dict[str, int] = {}
    return Contender(
        lambda: run_pass(balances), lambda: _by_number(balances), balances.clear, passes
    )


def raw_memory_pass(fetch: Callable[[int, int], Any], balances: dict[str, int]) -> None:
    """Keyset pages of the log, a decode per payload, a dict update per event."""
    get = balances.get
    for rows in pages(fetch, BATCH):
        for _, stream, type_, data in rows:
            payload = _decode(data)
            balances[stream] = get(stream, 0) + (
                payload["amount"] if type_ == DEPOSITED_TYPE else 0
            )


def raw_sql_contender(
    conn: Any, run_pass: Callable[[int], None], passes: int, *, postgres: bool = False
) -> Contender:
    """``run_pass(after)`` catches up from the checkpoint ``after`` (:func:`raw_sql_pass`)."""
    read_checkpoint = pg(RAW_READ_CHECKPOINT) if postgres else RAW_READ_CHECKPOINT

    def prepare() -> None:
        conn.execute("DELETE FROM raw_balances")
        conn.execute("DELETE FROM raw_checkpoint")

    def run() -> None:
        row = conn.execute(read_checkpoint, ("balances",)).fetchone()
        run_pass(row[0] if row else 0)

    def finish() -> dict[int, int]:
        return _by_number(
            dict(conn.execute("SELECT account, balance FROM raw_balances").fetchall())
        )

    return Contender(run, finish, prepare, passes)


def raw_sql_pass(
    fetch: Callable[[int, int], Any],
    after: int,
    transaction: Callable[[], AbstractContextManager[Any]],
    execute: Callable[..., Any],
    upsert: str,
    checkpoint: str,
) -> None:
    """The same pages from ``after``; per page one transaction: an upsert per event
    and the checkpoint."""
    for rows in pages(fetch, BATCH, after):
        with transaction():
            for _, stream, type_, data in rows:
                payload = _decode(data)
                execute(upsert, (stream, payload["amount"] if type_ == DEPOSITED_TYPE else 0))
            execute(checkpoint, ("balances", rows[-1][0]))


@contextmanager
def _sqlite_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# -- SQLite -----------------------------------------------------------------------------------


def sqlite_suite(counts: Counts, stack: ExitStack) -> list[dict[str, Measurement]]:
    directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="eventfold-proj-")))
    events = counts.events
    expected = expected_balances(counts)

    # raw: the same events table and pragmas as eventfold (sqlite_bench.RawStore)
    raw = RawStore(directory / "raw.db", "normal")
    stack.callback(raw.close)
    conn = raw.conn
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO events (stream, version, id, type, schema_version, data, metadata,"
        " recorded_at) VALUES (?, ?, ?, ?, 1, ?, NULL, ?)",
        (
            (stream, v, uuid.uuid4().bytes, type_, data, time.time_ns() // 1000)
            for stream, v, type_, data in raw_log_rows(counts)
        ),
    )
    conn.execute("CREATE TABLE raw_balances (account TEXT PRIMARY KEY, balance INTEGER NOT NULL)")
    conn.execute("CREATE TABLE raw_checkpoint (name TEXT PRIMARY KEY, position INTEGER)")
    conn.execute("COMMIT")

    es_path = directory / "es.db"
    env = es_sqlite_env(es_path, "normal")
    app = EsBank(env=env)
    stack.callback(app.close)
    es_ids = write_es_log(app, counts)

    ef_path = directory / "ef.db"
    store = SqliteEventStore(ef_path, durability="normal")
    stack.callback(store.close)
    write_ef_log(store, counts)
    _checkpoint(raw.path, str(es_path), str(ef_path))

    # (a) in-memory read model
    def fetch(after: int, size: int) -> list[Any]:
        return conn.execute(RAW_PAGE, (after, size)).fetchall()

    es_memory: dict[str, Any] = {}

    def es_memory_prepare() -> None:
        es_memory["view"] = view = EsMemoryView()
        es_memory["projection"] = EsMemoryBalances(view)

    def es_memory_run() -> None:
        es_pull(app, es_memory["projection"], es_memory["view"])

    memory = catch_up(
        f"SQLite: catch-up of {events:,} events into an in-memory read model",
        events,
        {
            RAW_SQLITE: raw_memory_contender(
                lambda balances: raw_memory_pass(fetch, balances), counts.memory_passes
            ),
            ES: Contender(
                es_memory_run,
                lambda: _by_es_id(es_memory["view"].balances, es_ids),
                es_memory_prepare,
                counts.memory_passes,
            ),
            EF: ef_memory_contender(store, counts.memory_passes, events),
            EF_ASYNC: ef_async_memory_contender(
                lambda: AsyncSqliteEventStore(ef_path, durability="normal"),
                counts.memory_passes,
                events,
                stack,
            ),
        },
        expected,
    )

    # (b) SQL read model in the same database
    def raw_sql(after: int) -> None:
        raw_sql_pass(
            fetch,
            after,
            lambda: _sqlite_transaction(conn),
            conn.execute,
            RAW_UPSERT,
            RAW_CHECKPOINT,
        )

    es_view = es_factory(EsSqlBalances.name, env).tracking_recorder(EsSqliteView)
    stack.callback(es_view.datastore.close)
    es_projection = EsSqlBalances(es_view)

    def es_sql_prepare() -> None:
        with es_view.datastore.transaction(commit=True) as c:
            c.execute("DELETE FROM es_balances")
            c.execute("DELETE FROM tracking WHERE application_name = ?", (app.name,))

    def es_sql_finish() -> dict[int, int]:
        with es_view.datastore.transaction(commit=False) as c:
            c.execute("SELECT account, balance FROM es_balances")
            return _by_es_id({r[0]: r[1] for r in c.fetchall()}, es_ids)

    def ef_db() -> Any:
        return _SqliteConn(ef_path)

    sql_results = catch_up(
        f"SQLite: catch-up of {events:,} events into a SQL read model (same file)",
        events,
        {
            RAW_SQLITE: raw_sql_contender(conn, raw_sql, counts.sql_passes),
            ES: Contender(
                lambda: es_pull(app, es_projection, es_view),
                es_sql_finish,
                es_sql_prepare,
                counts.es_sql_passes,
            ),
            EF: ef_sql_contender(store, counts.sql_passes, events, ef_db),
        },
        expected,
    )

    latency = ef_live_latency(
        "SQLite",
        SqliteEventStore(directory / "live.db", durability="normal"),
        lambda: AsyncSqliteEventStore(directory / "live.db", durability="normal"),
        counts,
        stack,
    )
    return [memory, sql_results, latency]


class _SqliteConn:
    """A short-lived autocommit sqlite3 connection, closed on exit."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.close()


# -- PostgreSQL ---------------------------------------------------------------------------------


def postgres_suite(url: str, counts: Counts, stack: ExitStack) -> list[dict[str, Measurement]]:
    events = counts.events
    expected = expected_balances(counts)

    create_schemas(url, "raw_proj", "es_proj", "es_live")

    # raw: postgres_bench's events table, in its own schema
    conn = psycopg.connect(schema_url(url, "raw_proj"), autocommit=True)
    stack.callback(conn.close)
    conn.execute(RAW_SCHEMA)
    conn.execute("CREATE TABLE raw_balances (account text PRIMARY KEY, balance bigint NOT NULL)")
    conn.execute("CREATE TABLE raw_checkpoint (name text PRIMARY KEY, position bigint)")
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            RAW_INSERT,
            [(stream, v, uuid.uuid4(), t, data) for stream, v, t, data in raw_log_rows(counts)],
        )
    conn.execute("VACUUM ANALYZE events")

    env = es_env(url, "es_proj", 2)
    app = EsBank(env=env)
    stack.callback(app.close)
    es_ids = write_es_log(app, counts)
    last_id = app.recorder.max_notification_id()
    # The runner's own application must not re-create the tables; its views do.
    runner_env = {**env, "ESBANK_CREATE_TABLE": "n"}
    memory_env = {**runner_env, "BALANCES_MEMORY_PERSISTENCE_MODULE": "eventsourcing.popo"}

    migrate(url, schema="ef_proj")
    store = PostgresEventStore(url, schema="ef_proj", max_size=4)
    stack.callback(store.close)
    write_ef_log(store, counts)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("VACUUM ANALYZE")

    # (a) in-memory read model
    page, upsert, checkpoint = pg(RAW_PAGE), pg(RAW_UPSERT), pg(RAW_CHECKPOINT)

    def raw_memory(balances: dict[str, int]) -> None:
        with conn.cursor(binary=True) as cur:
            raw_memory_pass(
                lambda after, size: cur.execute(page, (after, size)).fetchall(), balances
            )

    runners: dict[str, Any] = {}

    def es_runner(projection_class: type[EsBalances], view_class: type, run_env: dict) -> None:
        projection_class.target = last_id
        projection_class.done = done = threading.Event()
        runner = EsProjectionRunner(
            application_class=EsBank,
            projection_class=projection_class,
            view_class=view_class,
            env=run_env,
        )
        runner.__enter__()
        runners[projection_class.name] = runner
        while not done.wait(1.0):
            if runner.is_interrupted.is_set():
                runner.__exit__(None, None, None)  # raises the processing thread's error
                raise RuntimeError("eventsourcing's projection runner stopped")

    def es_stop(name: str) -> Any:
        runner = runners.pop(name)
        runner.__exit__(None, None, None)
        return runner.projection.view

    memory = catch_up(
        f"PostgreSQL: catch-up of {events:,} events into an in-memory read model",
        events,
        {
            RAW_PG: raw_memory_contender(raw_memory, counts.memory_passes),
            ES: Contender(
                lambda: es_runner(EsMemoryBalances, EsMemoryView, memory_env),
                lambda: _by_es_id(es_stop(EsMemoryBalances.name).balances, es_ids),
                passes=counts.memory_passes,
            ),
            EF: ef_memory_contender(store, counts.memory_passes, events),
            EF_ASYNC: ef_async_memory_contender(
                lambda: AsyncPostgresEventStore(url, schema="ef_proj", max_size=4),
                counts.memory_passes,
                events,
                stack,
            ),
        },
        expected,
    )

    # (b) SQL read model in the same database
    def raw_sql(after: int) -> None:
        with conn.cursor(binary=True) as reader, conn.cursor() as writer:
            raw_sql_pass(
                lambda after, size: reader.execute(page, (after, size)).fetchall(),
                after,
                conn.transaction,
                writer.execute,
                upsert,
                checkpoint,
            )

    # Create the view's tables once (the runner's view then finds them).
    es_factory(EsSqlBalances.name, env).tracking_recorder(EsPostgresView).datastore.close()

    def es_sql_prepare() -> None:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("DELETE FROM es_proj.es_balances")
            c.execute(
                "DELETE FROM es_proj.balances_sql_tracking WHERE application_name = %s",
                (app.name,),
            )

    def es_sql_finish() -> dict[int, int]:
        es_stop(EsSqlBalances.name)
        with psycopg.connect(url, autocommit=True) as c:
            return _by_es_id(
                dict(c.execute("SELECT account, balance FROM es_proj.es_balances").fetchall()),
                es_ids,
            )

    def ef_db() -> Any:
        return psycopg.connect(url, autocommit=True)

    sql_results = catch_up(
        f"PostgreSQL: catch-up of {events:,} events into a SQL read model (same database)",
        events,
        {
            RAW_PG: raw_sql_contender(conn, raw_sql, counts.sql_passes, postgres=True),
            ES: Contender(
                lambda: es_runner(EsSqlBalances, EsPostgresView, runner_env),
                es_sql_finish,
                es_sql_prepare,
                counts.es_sql_passes,
            ),
            EF: ef_sql_contender(store, counts.sql_passes, events, ef_db),
        },
        expected,
    )

    migrate(url, schema="ef_live")
    live_store = PostgresEventStore(url, schema="ef_live", max_size=4)
    latency = ef_live_latency(
        "PostgreSQL",
        live_store,
        lambda: AsyncPostgresEventStore(url, schema="ef_live", max_size=4),
        counts,
        stack,
        es_env(url, "es_live", 2),
    )
    return [memory, sql_results, latency]


# -- live latency: append -> read model updated -------------------------------------------------


def ef_live_latency(
    backend: str,
    store: Any,
    open_async: Callable[[], AsyncEventStore],
    counts: Counts,
    stack: ExitStack,
    es_live_env: dict[str, str] | None = None,
) -> dict[str, Measurement]:
    """A consumer follows the log in a thread; the writer (this thread) appends one
    deposit every LATENCY_GAP_S; the handler takes the time when it updates the
    read model. Latency = that time - the time just before the append call.
    The "wait_for" row: the writer appends, then ``store.wait_for`` waits for the
    runner's checkpoint to pass the append (read your writes), and takes the time
    when that returns. The async runner follows the same log from an event loop
    in its own thread (an async store on the same database), and ``subscribe()``
    (a plain subscription in a thread, no read model, no checkpoint; for the
    async runner, an async subscription in an event loop of its own) is the floor
    a runner's latency is compared with.

    Only the consumer being measured is live during its round (each append would
    wake all of them otherwise, and on two cores they would mostly measure each
    other): it is started before the round, warmed up, and stopped after it.
    Rounds rotate, so drift is shared. Each consumer writes and reads its own stream.

    ``es_live_env``: also eventsourcing's ProjectionRunner (PostgreSQL only)."""
    stack.callback(store.close)
    clock = time.perf_counter_ns
    received: list[tuple[int, int]] = []
    waited: list[tuple[int, int]] = []
    async_received: list[tuple[int, int]] = []
    subscribed: list[tuple[int, int]] = []
    versions = {"live": 0, "async-live": 0, "sub-live": 0, "asub-live": 0}

    def append_to(stream: str, sample: int) -> int:
        result = store.append(stream, [Deposited(amount=sample)], expected=versions[stream])
        versions[stream] = result.to_version
        return result.position

    def handle(ctx: ProjectionContext, event: Any) -> None:
        ctx.execute(EF_UPSERT, (event.stream, event.data.amount))
        received.append((event.data.amount, clock()))

    sync_projection = Projection("balances-live", handle, stream_prefix="live", setup=ef_setup)

    def start_sync() -> Callable[[], None]:
        stop = threading.Event()
        runner = ProjectionRunner(store, sync_projection)
        thread = threading.Thread(target=runner.run, args=(stop,), name="eventfold-runner")
        thread.start()

        def halt() -> None:
            stop.set()
            thread.join(30)

        return halt

    async def async_handle(ctx: ProjectionContext, event: Any) -> None:
        await ctx.execute(ASYNC_UPSERT, (event.stream, event.data.amount))
        async_received.append((event.data.amount, clock()))

    async def async_setup(ctx: ProjectionContext) -> None:
        await ctx.execute(
            "CREATE TABLE IF NOT EXISTS ef_async_balances (account TEXT PRIMARY KEY, balance BIGINT)"
        )

    async_projection = Projection(
        "balances-live-async", async_handle, stream_prefix="async-", setup=async_setup
    )

    def start_async() -> Callable[[], None]:
        loops: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        ready = threading.Event()

        async def service() -> None:
            async with open_async() as astore:
                astop = asyncio.Event()
                loops.append((asyncio.get_running_loop(), astop))
                ready.set()
                await AsyncProjectionRunner(astore, async_projection).run(astop)

        thread = threading.Thread(
            target=asyncio.run, args=(service(),), name="eventfold-async-runner"
        )
        thread.start()
        if not ready.wait(WAIT_S):
            raise RuntimeError(f"{backend}: the async runner did not start")

        def halt() -> None:
            loop, astop = loops[0]
            loop.call_soon_threadsafe(astop.set)
            thread.join(30)

        return halt

    def start_subscriber() -> Callable[[], None]:
        stop = threading.Event()
        head = store.last_position()

        def follow() -> None:
            for event in store.subscribe(
                after=head, stream_prefix="sub-", poll_interval=1.0, stop=stop
            ):
                subscribed.append((event.data.amount, clock()))

        thread = threading.Thread(target=follow, name="eventfold-subscriber")
        thread.start()

        def halt() -> None:
            stop.set()
            thread.join(30)

        return halt

    async_subscribed: list[tuple[int, int]] = []

    def start_async_subscriber() -> Callable[[], None]:
        loops: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        ready = threading.Event()
        head = store.last_position()

        async def follow() -> None:
            async with open_async() as astore:
                astop = asyncio.Event()
                loops.append((asyncio.get_running_loop(), astop))
                ready.set()
                async for event in astore.subscribe(
                    after=head, stream_prefix="asub-", poll_interval=1.0, stop=astop
                ):
                    async_subscribed.append((event.data.amount, clock()))

        thread = threading.Thread(
            target=asyncio.run, args=(follow(),), name="eventfold-async-subscriber"
        )
        thread.start()
        if not ready.wait(WAIT_S):
            raise RuntimeError(f"{backend}: the async subscriber did not start")

        def halt() -> None:
            loop, astop = loops[0]
            loop.call_soon_threadsafe(astop.set)
            thread.join(30)

        return halt

    def write_and_wait(sample: int) -> None:
        # Read your writes: the append, then store.wait_for the read model to pass it.
        position = append_to("live", sample)
        store.wait_for("balances-live", position, timeout=WAIT_S)
        waited.append((sample, clock()))

    def nothing() -> None:
        return None

    Writer = tuple[Callable[[int], Any], list[tuple[int, int]], Callable[[], Callable[[], None]]]
    writers: dict[str, Writer] = {
        EF: (lambda sample: append_to("live", sample), received, start_sync),
        EF_WAIT: (write_and_wait, waited, start_sync),
        EF_ASYNC: (lambda sample: append_to("async-live", sample), async_received, start_async),
        EF_SUB: (lambda sample: append_to("sub-live", sample), subscribed, start_subscriber),
        EF_ASYNC_SUB: (
            lambda sample: append_to("asub-live", sample),
            async_subscribed,
            start_async_subscriber,
        ),
    }

    if es_live_env is not None:
        writer_app = EsBank(env=es_live_env)
        stack.callback(writer_app.close)
        account = EsAccount()
        writer_app.save(account)
        es_received: list[tuple[int, int]] = []
        EsLiveBalances.received = es_received
        EsLiveBalances.target = 10**18  # never "done": it follows until stopped
        EsLiveBalances.done = threading.Event()
        es_runner = EsProjectionRunner(
            application_class=EsBank,
            projection_class=EsLiveBalances,
            view_class=EsPostgresView,
            env=es_live_env,
        )
        es_runner.__enter__()
        stack.callback(es_runner.__exit__, None, None, None)

        def es_write(sample: int) -> None:
            account.deposit(sample)
            writer_app.save(account)

        writers[ES] = (es_write, es_received, lambda: nothing)  # its own schema: always live

    title = (
        f"{backend}: live latency, append -> read model updated ({counts.latency_samples} samples)"
    )
    results = {name: Measurement(title, "-", name, 1) for name in writers}
    per_round = [counts.latency_warmup, *split(counts.latency_samples, counts.latency_rounds)]
    names = list(writers)
    sample = 0
    for round_index, n in enumerate(per_round):
        for name in rotated(names, round_index):
            write, got, start = writers[name]
            halt = start()
            try:
                for _ in range(PHASE_WARMUP):  # the consumer's first events: not measured
                    sample += 1
                    got.clear()
                    write(sample)
                    deadline = time.monotonic() + WAIT_S
                    while not got and time.monotonic() < deadline:
                        time.sleep(0.001)
                got.clear()
                sent: dict[int, int] = {}
                for _ in range(n):
                    sample += 1
                    sent[sample] = clock()
                    write(sample)
                    time.sleep(LATENCY_GAP_S)
                deadline = time.monotonic() + WAIT_S
                while len(got) < n and time.monotonic() < deadline:
                    time.sleep(0.005)
            finally:
                halt()
            # Every sample exactly once and in order.
            if [s for s, _ in got] != list(sent):
                seen = [s for s, _ in got]
                raise RuntimeError(
                    f"{title}: {name} did not update every sample once, in order "
                    f"(sent {len(sent)}: {list(sent)[:3]}..., got {len(seen)}: {seen[:3]}...)"
                )
            if round_index:  # round 0 is the warm-up
                results[name].latencies_ns.extend(at - sent[s] for s, at in got)
    return results


# -- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    add_conninfo_argument(parser)
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgres", "both"),
        default="both",
        help="which databases to run (default both)",
    )


TARGETS = {"in-memory": {ES: 2.0, "raw": 0.5}, "SQL": {ES: 10.0}}


def _report(results: dict[str, Measurement]) -> dict[str, Any]:
    first = next(iter(results.values()))
    if first.scenario.split(": ")[1].startswith("live latency"):
        return _report_latency(results)
    raw = next(name for name in results if name.startswith("raw-"))
    ratio_values = ratios(results, EF, [raw, ES])
    if EF_ASYNC in results:
        ratio_values |= ratios(results, EF_ASYNC, [EF])
    print_table(first.scenario, results, ratio_values)
    kind = "in-memory" if "in-memory" in first.scenario else "SQL"
    checks = []
    if EF_ASYNC in results:
        value = ratio_values[f"{EF_ASYNC}/{EF}"]
        checks.append(f"{EF_ASYNC}/{EF} >= 0.8x: {'met' if value >= 0.8 else 'MISSED'}")
    for other, target in TARGETS[kind].items():
        name = raw if other == "raw" else other
        value = ratio_values[f"{EF}/{name}"]
        checks.append(f"{EF}/{name} >= {target:g}x: {'met' if value >= target else 'MISSED'}")
    print("targets: " + "   ".join(checks))
    return record(results, ratio_values, targets=checks)


def _report_latency(results: dict[str, Measurement]) -> dict[str, Any]:
    ratio_values = latency_ratios(results, EF, [EF_SUB, *([ES] if ES in results else [])])
    ratio_values |= latency_ratios(results, EF_ASYNC, [EF_ASYNC_SUB, EF_SUB])
    first = next(iter(results.values()))
    print_latency_table(first.scenario, results, ratio_values)
    checks = []
    # Each flavour's runner against the subscription of its own flavour (the
    # async stores' hops to their threads or event loop are in both).
    for runner, floor in ((EF, EF_SUB), (EF_ASYNC, EF_ASYNC_SUB)):
        p50 = ratio_values[f"p50 {runner}/{floor}"]
        p99 = results[runner].latency_us(99)
        checks.append(f"{runner}: p50 <= 1.5x {floor}: {'met' if p50 <= 1.5 else 'MISSED'}")
        checks.append(f"{runner}: p99 < 3 ms: {'met' if p99 < 3000 else 'MISSED'}")
    print("targets: " + "   ".join(checks))
    if ES not in results:
        print(
            "eventsourcing: not measured on SQLite; its SQLite recorder (9.5.6) has no"
            " subscribe(), so its ProjectionRunner cannot follow a SQLite log"
        )
    return latency_record(results, ratio_values)


def run(args: argparse.Namespace) -> int:
    counts = QUICK_COUNTS if args.quick else FULL_COUNTS
    info = system_info(
        eventfold=eventfold.__version__,
        eventsourcing=importlib.metadata.version("eventsourcing"),
        psycopg=psycopg.__version__,
        quick=bool(args.quick),
    )
    print(
        f"eventfold {info['eventfold']} | eventsourcing {info['eventsourcing']} | "
        f"SQLite {info['sqlite']} | psycopg {info['psycopg']} | Python {info['python']} | "
        f"{info['cpus']} CPUs | {'quick' if args.quick else 'full'} run | "
        f"log: {counts.events:,} events in {counts.streams} streams"
    )
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    if args.backend in ("sqlite", "both"):
        with ExitStack() as stack:
            for results in sqlite_suite(counts, stack):
                records.append(_report(results))
        gc.collect()
    if args.backend in ("postgres", "both"):
        with scratch_database(conninfo(args)) as url, ExitStack() as stack:
            for results in postgres_suite(url, counts, stack):
                records.append(_report(results))
        gc.collect()
    return finish(args, info, started, records)


def main(argv: list[str] | None = None) -> int:
    return suite_main("projections", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
