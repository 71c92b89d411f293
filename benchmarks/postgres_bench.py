"""PostgreSQL benchmark: raw psycopg vs eventsourcing 9.5.6 vs eventfold, same run.

Run with ``python -m benchmarks postgres [--quick] [--json PATH] [--conninfo URL]``.
A scratch database is created on the server named by ``--conninfo`` (a role
allowed to CREATE DATABASE) and dropped at the end. Scenarios: one writer
appending 1, 10 and 100 events per transaction; 8 writers appending to
distinct streams, as threads and as processes; 8 writer threads on one hot
stream (read version, append with it, retry on conflict); load and fold of a
1,000-event stream; read_all of the whole log with decoding; and the latency
of a live subscriber from commit to delivery.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import itertools
import multiprocessing
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import msgspec

from benchmarks._common import (
    DECIDER,
    DEPOSIT,
    DEPOSITED_TYPE,
    ES_DEPOSITED,
    OPENED_TYPE,
    PAGE_SIZE,
    STREAM_EVENTS,
    Deposited,
    EsAccount,
    EsBank,
    Opened,
    add_common_arguments,
    check,
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
    run_rounds,
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

try:
    from eventsourcing.persistence import RecordConflictError
    from eventsourcing.projection import ApplicationSubscription
    from eventsourcing.system import NotificationLogReader
except ImportError as exc:  # pragma: no cover
    raise SystemExit(
        "the PostgreSQL benchmark compares against eventsourcing==9.5.6: pip install 'eventfold[bench]'"
    ) from exc

import eventfold
from eventfold import CommandHandler, StreamAppend, WrongExpectedVersion
from eventfold.store.postgres import PostgresEventStore, migrate

RAW, ES, EF = "raw-psycopg", "eventsourcing", "eventfold"
WRITERS = 8
LATENCY_GAP_S = 0.002  # the latency writer sleeps this long after each commit
WORKER_TIMEOUT_S = 120.0  # a helper process that says nothing for this long has failed


@dataclass(frozen=True)
class Counts:
    append_1: int
    append_10: int
    append_100: int
    concurrent_bursts: int  # each burst: WRITERS threads (or processes) x burst_appends appends
    burst_appends: int
    hot_bursts: int  # each burst: WRITERS threads x hot_appends appends to one fresh stream
    hot_appends: int
    loads: int  # loads of a STREAM_EVENTS stream, per contender
    load_streams: int
    read_all_events: int
    read_all_passes: int
    latency_samples: int  # subscriber latency samples per contender, after the warm-up
    latency_warmup: int
    tail_reads: int  # empty reads at the end of the log, per contender
    pairs: int  # atomic appends to two streams, per contender
    rounds: int


FULL_COUNTS = Counts(
    append_1=3_000,
    append_10=1_000,
    append_100=200,
    concurrent_bursts=30,
    burst_appends=20,
    hot_bursts=20,
    hot_appends=10,
    loads=200,
    load_streams=5,
    read_all_events=50_000,
    read_all_passes=6,
    latency_samples=1_000,
    latency_warmup=50,
    tail_reads=5_000,
    pairs=1_000,
    rounds=5,
)
QUICK_COUNTS = Counts(
    append_1=300,
    append_10=100,
    append_100=20,
    concurrent_bursts=4,
    burst_appends=10,
    hot_bursts=4,
    hot_appends=5,
    loads=30,
    load_streams=2,
    read_all_events=5_000,
    read_all_passes=3,
    latency_samples=150,
    latency_warmup=20,
    tail_reads=500,
    pairs=100,
    rounds=3,
)


class CountingStore(PostgresEventStore):
    """eventfold's store, counting the appends refused with WrongExpectedVersion, per stream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conflicts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def append(self, stream: str, events: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        try:
            return super().append(stream, events, **kwargs)
        except WrongExpectedVersion:
            with self._lock:
                self.conflicts[stream] += 1
            raise


# -- raw psycopg: the same table and indexes as eventfold, a plain transaction per append ---

RAW_VERSION = "SELECT coalesce(max(version), 0) FROM events WHERE stream = %s"
RAW_COUNT = "SELECT count(*), coalesce(max(version), 0) FROM events WHERE stream = %s"
RAW_READ_ALL = (
    "SELECT position, stream, version, id, type, schema_version, data, metadata "
    "FROM events WHERE position > %s ORDER BY position LIMIT %s"
)
RAW_LOAD = (
    "SELECT position, stream, version, id, type, schema_version, data, metadata "
    "FROM events WHERE stream = %s ORDER BY version"
)
_encode = msgspec.json.encode
_decode = msgspec.json.decode


class Conflict(RuntimeError):
    """A raw append whose expected version was stale, or that lost the race for it."""


class RawStore:
    """A careful hand-written psycopg event table: check version, insert, commit."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.conn = psycopg.connect(url, autocommit=True)
        if create:
            self.conn.execute(RAW_SCHEMA)

    def append(
        self,
        stream: str,
        amounts: list[int],
        expected: int,
        conn: Any = None,
        *,
        type_name: str = DEPOSITED_TYPE,
        notify: str | None = None,
    ) -> int:
        """Append in one transaction; ``notify``: also NOTIFY that channel in it."""
        conn = conn or self.conn
        rows = [(uuid.uuid4(), _encode({"amount": a})) for a in amounts]
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(RAW_VERSION, (stream,))
                (actual,) = cur.fetchone()
                if actual != expected:
                    raise Conflict(f"{stream}: expected {expected}, found {actual}")
                cur.executemany(
                    RAW_INSERT,
                    [(stream, actual + i, eid, type_name, d) for i, (eid, d) in enumerate(rows, 1)],
                )
                if notify is not None:
                    cur.execute("SELECT pg_notify(%s, '')", (notify,))
        except psycopg.errors.UniqueViolation as exc:
            raise Conflict(f"{stream}: another writer took version {expected + 1}") from exc
        return actual + len(rows)

    def load(self, stream: str, conn: Any = None) -> tuple[int, int]:
        """SELECT the stream, decode every payload, fold: (balance, version)."""
        balance = version = 0
        with (conn or self.conn).cursor(binary=True) as cur:
            for row in cur.execute(RAW_LOAD, (stream,)).fetchall():
                payload = _decode(row[6])
                if row[4] == DEPOSITED_TYPE:
                    balance += payload["amount"]
                version = row[2]
        return balance, version

    def count(self, stream: str) -> tuple[int, int]:
        """(number of events, highest version) of ``stream``."""
        count, version = self.conn.execute(RAW_COUNT, (stream,)).fetchone()
        return count, version

    def read_all(self) -> Iterator[dict[str, Any]]:
        with self.conn.cursor(binary=True) as cur:
            for rows in pages(
                lambda after, size: cur.execute(RAW_READ_ALL, (after, size)).fetchall()
            ):
                for row in rows:
                    yield _decode(row[6])

    def close(self) -> None:
        self.conn.close()


class Bench:
    """Owns the stores of each contender, each in its own schema of one scratch database.

    ``stack`` closes what a scenario opened; the runner gives each scenario a
    fresh one, so connections do not pile up towards the server's limit.
    """

    def __init__(self, url: str, counts: Counts, hold: str = "none") -> None:
        self.url = url
        self.counts = counts
        self.hold = hold
        self.stack = ExitStack()
        self._n = 0

    def _schema(self, label: str) -> str:
        self._n += 1
        return f"{label}_{self._n}"

    def open_raw(self) -> RawStore:
        schema = self._schema("raw")
        create_schemas(self.url, schema)
        store = RawStore(schema_url(self.url, schema))
        self.stack.callback(store.close)
        return store

    def open_es(self, pool_size: int = WRITERS) -> EsBank:
        schema = self._schema("es")
        create_schemas(self.url, schema)
        app = EsBank(env=es_env(self.url, schema, pool_size))
        self.stack.callback(app.close)
        return app

    def open_ef(
        self, cls: type[PostgresEventStore] = PostgresEventStore, max_size: int = WRITERS
    ) -> PostgresEventStore:
        schema = self._schema("ef")
        migrate(self.url, schema=schema)
        store = cls(self.url, schema=schema, max_size=max_size)
        self.stack.callback(store.close)
        return store

    def appends(self, batch: int, count: int) -> dict[str, Measurement]:
        raw, app, store = self.open_raw(), self.open_es(), self.open_ef()
        state = {"raw": 0, "ef": 0}

        def raw_op() -> None:
            state["raw"] = raw.append("account-1", [10] * batch, state["raw"])

        account = EsAccount()
        app.save(account)

        def es_op() -> None:
            for _ in range(batch):
                account.deposit(10)
            app.save(account)

        def ef_op() -> None:
            result = store.append(
                "account-1", [Deposited(amount=10) for _ in range(batch)], expected=state["ef"]
            )
            state["ef"] = result.to_version

        return run_rounds(
            f"append {batch} event{'s' if batch > 1 else ''}/txn, 1 writer",
            "synchronous_commit=on",
            batch,
            {RAW: raw_op, ES: es_op, EF: ef_op},
            count=count,
            rounds=self.counts.rounds,
            warmup=max(5, min(100, count // 10)),
        )

    def concurrent(self) -> dict[str, Measurement]:
        raw, app, store = self.open_raw(), self.open_es(), self.open_ef()
        pool = self.stack.enter_context(ThreadPoolExecutor(WRITERS))
        k = self.counts.burst_appends
        raw_conns = self._raw_connections(raw)
        raw_versions = [0] * WRITERS
        ef_versions = [0] * WRITERS
        es_accounts = [EsAccount() for _ in range(WRITERS)]
        for account in es_accounts:
            app.save(account)

        def burst(work: Callable[[int], None]) -> Callable[[], None]:
            def op() -> None:
                for future in [pool.submit(work, w) for w in range(WRITERS)]:
                    future.result()

            return op

        def raw_work(w: int) -> None:
            for _ in range(k):
                raw_versions[w] = raw.append(f"w{w}", [10], raw_versions[w], raw_conns[w])

        def es_work(w: int) -> None:
            account = es_accounts[w]
            for _ in range(k):
                account.deposit(10)
                app.save(account)

        def ef_work(w: int) -> None:
            for _ in range(k):
                ef_versions[w] = store.append(
                    f"w{w}", [Deposited(amount=10)], expected=ef_versions[w]
                ).to_version

        results = run_rounds(
            f"{WRITERS} writer threads x {k} appends of 1 event, distinct streams",
            "synchronous_commit=on",
            WRITERS * k,
            {RAW: burst(raw_work), ES: burst(es_work), EF: burst(ef_work)},
            count=self.counts.concurrent_bursts,
            rounds=self.counts.rounds,
            warmup=1,
        )
        per_stream = (self.counts.concurrent_bursts + 1) * k  # + the warm-up burst
        _check_streams(raw, app, store, [f"w{w}" for w in range(WRITERS)], es_accounts, per_stream)
        return results

    def _raw_connections(self, raw: RawStore) -> list[Any]:
        conns = [psycopg.connect(raw.url, autocommit=True) for _ in range(WRITERS)]
        for conn in conns:
            self.stack.callback(conn.close)
        return conns

    def processes(self) -> dict[str, Measurement]:
        """WRITERS spawned processes, each appending to its own stream with its own store."""
        raw, app, store = self.open_raw(), self.open_es(1), self.open_ef(max_size=1)
        k = self.counts.burst_appends
        accounts = [EsAccount() for _ in range(WRITERS)]
        app.save(*accounts)
        spec = {
            "url": self.url,
            "raw_url": raw.url,
            "es_env": es_env(self.url, app.env["POSTGRES_SCHEMA"], 1, create=False),
            "ef_schema": store.schema,
        }
        ctx = multiprocessing.get_context("spawn")
        workers: list[tuple[Any, Any]] = []
        try:
            for w in range(WRITERS):
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_writer_process,
                    args=(w, child, spec, accounts[w].id),
                    name=f"bench-writer-{w}",
                    daemon=True,
                )
                proc.start()
                child.close()
                workers.append((proc, parent))
            for proc, pipe in workers:
                _expect(pipe, proc)

            def burst(name: str) -> Callable[[], None]:
                def op() -> None:
                    for _, pipe in workers:
                        pipe.send((name, k))
                    for proc, pipe in workers:
                        _expect(pipe, proc)

                return op

            results = run_rounds(
                f"{WRITERS} writer processes x {k} appends of 1 event, distinct streams",
                "synchronous_commit=on",
                WRITERS * k,
                {RAW: burst(RAW), ES: burst(ES), EF: burst(EF)},
                count=self.counts.concurrent_bursts,
                rounds=self.counts.rounds,
                warmup=1,
            )
        finally:
            _stop_workers(workers)
        per_stream = (self.counts.concurrent_bursts + 1) * k
        _check_streams(raw, app, store, [f"p{w}" for w in range(WRITERS)], accounts, per_stream)
        return results

    def hot_stream(self) -> dict[str, Measurement]:
        """WRITERS threads on one stream: read the version, append with it, retry on conflict."""
        raw, app = self.open_raw(), self.open_es()
        store = self.open_ef(CountingStore)
        assert isinstance(store, CountingStore)
        pool = self.stack.enter_context(ThreadPoolExecutor(WRITERS))
        raw_conns = self._raw_connections(raw)
        k = self.counts.hot_appends
        # A fresh stream per burst (the warm-up burst too), so every burst does the same
        # work: each load folds at most 1 + WRITERS * k events.
        streams = [f"hot-{i}" for i in range(self.counts.hot_bursts + 1)]
        es_accounts = [EsAccount() for _ in streams]
        app.save(*es_accounts)
        for stream in streams:
            raw.append(stream, [0], 0, type_name=OPENED_TYPE)
            store.append(stream, [Opened()], expected=0)
        # Every contender retries at once, without back-off, until its append succeeds.
        handler: CommandHandler[int, object] = CommandHandler(
            store, DECIDER, max_retries=1_000_000, retry_delay=0.0
        )
        conflicts: dict[str, Counter[str]] = {RAW: Counter(), ES: Counter(), EF: store.conflicts}
        lock = threading.Lock()
        turn = {RAW: -1, ES: -1, EF: -1}

        def burst(name: str, work: Callable[[int, int], None]) -> Callable[[], None]:
            def op() -> None:
                turn[name] += 1
                for future in [pool.submit(work, w, turn[name]) for w in range(WRITERS)]:
                    future.result()

            return op

        def raw_work(w: int, i: int) -> None:
            conn, stream = raw_conns[w], streams[i]
            for _ in range(k):
                while True:
                    _, version = raw.load(stream, conn)
                    try:
                        raw.append(stream, [10], version, conn)
                        break
                    except Conflict:
                        with lock:
                            conflicts[RAW][stream] += 1

        def es_work(w: int, i: int) -> None:
            account_id = es_accounts[i].id
            for _ in range(k):
                while True:
                    account = app.repository.get(account_id)
                    account.deposit(10)
                    try:
                        app.save(account)
                        break
                    except RecordConflictError:
                        with lock:
                            conflicts[ES][streams[i]] += 1

        def ef_work(w: int, i: int) -> None:
            stream = streams[i]
            for _ in range(k):
                handler.handle(stream, DEPOSIT)

        results = run_rounds(
            f"{WRITERS} writer threads x {k} appends of 1 event, ONE hot stream",
            "synchronous_commit=on",
            WRITERS * k,
            {RAW: burst(RAW, raw_work), ES: burst(ES, es_work), EF: burst(EF, ef_work)},
            count=self.counts.hot_bursts,
            rounds=self.counts.rounds,
            warmup=1,
        )
        for i, stream in enumerate(streams):
            _check_streams(raw, app, store, [stream], [es_accounts[i]], WRITERS * k, opened=True)
        appends = self.counts.hot_bursts * WRITERS * k
        for name, m in results.items():
            lost = sum(conflicts[name][s] for s in streams[1:])  # not the warm-up burst
            m.extra.update(conflicts=lost, conflicts_per_append=round(lost / appends, 3))
        return results

    def load_stream(self) -> dict[str, Measurement]:
        raw, app, store = self.open_raw(), self.open_es(), self.open_ef()
        streams = [f"account-{n}" for n in range(self.counts.load_streams)]
        es_ids: list[uuid.UUID] = []
        chunk = 111  # 9 transactions of 111 deposits after the "opened" event
        for stream in streams:
            version = raw.append(stream, [0], 0, type_name=OPENED_TYPE)
            ef_version = store.append(stream, [Opened()], expected=0).to_version
            account = EsAccount()
            for _ in range((STREAM_EVENTS - 1) // chunk):
                version = raw.append(stream, [10] * chunk, version)
                ef_version = store.append(
                    stream, [Deposited(amount=10) for _ in range(chunk)], expected=ef_version
                ).to_version
                for _ in range(chunk):
                    account.deposit(10)
                app.save(account)
            es_ids.append(account.id)
        expected = (10 * (STREAM_EVENTS - 1), STREAM_EVENTS)
        handler: CommandHandler[int, object] = CommandHandler(store, DECIDER)
        turn = {RAW: 0, ES: 0, EF: 0}

        def pick(name: str) -> int:
            turn[name] += 1
            return turn[name] % len(streams)

        def raw_op() -> None:
            check(raw.load(streams[pick(RAW)]) == expected, RAW)

        def es_op() -> None:
            account = app.repository.get(es_ids[pick(ES)])
            check((account.balance, account.version) == expected, ES)

        def ef_op() -> None:
            loaded = handler.load(streams[pick(EF)])
            check((loaded.state, loaded.version) == expected, EF)

        return run_rounds(
            f"load+fold {STREAM_EVENTS:,}-event stream",
            "-",
            STREAM_EVENTS,
            {RAW: raw_op, ES: es_op, EF: ef_op},
            count=self.counts.loads,
            rounds=self.counts.rounds,
            warmup=3,
        )

    def subscriber_latency(self) -> dict[str, Measurement]:
        """Commit-to-delivery latency of a live subscriber in another process.

        One writer (this process) appends one event, takes ``time.time_ns()``
        as soon as the append returned, then sleeps LATENCY_GAP_S, so that
        the latency does not include queueing behind earlier events.
        """
        raw, app, store = self.open_raw(), self.open_es(1), self.open_ef(max_size=1)
        channel = f"raw_events_{self._n}"
        samples, rounds = self.counts.latency_samples, self.counts.rounds
        per_round = [self.counts.latency_warmup, *split(samples, rounds)]
        ends = list(itertools.accumulate(per_round))
        account = EsAccount()
        app.save(account)
        state = {RAW: 0, EF: 0}

        def raw_write(sample: int) -> None:
            state[RAW] = raw.append("live", [sample], state[RAW], notify=channel)

        def es_write(sample: int) -> None:
            account.deposit(sample)
            app.save(account)

        def ef_write(sample: int) -> None:
            state[EF] = store.append(
                "live", [Deposited(amount=sample)], expected=state[EF]
            ).to_version

        writers = {RAW: raw_write, ES: es_write, EF: ef_write}
        specs: dict[str, dict[str, Any]] = {
            RAW: {"raw_url": raw.url, "channel": channel},
            ES: {"es_env": es_env(self.url, app.env["POSTGRES_SCHEMA"], 2, create=False)},
            EF: {"url": self.url, "schema": store.schema},
        }
        ctx = multiprocessing.get_context("spawn")
        subscribers: dict[str, tuple[Any, Any]] = {}
        title = f"subscriber latency, commit -> delivery in another process ({samples} samples)"
        results = {name: Measurement(title, "-", name, 1) for name in writers}
        try:
            for name in writers:
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_subscriber_process,
                    args=(name, child, specs[name], [end - 1 for end in ends]),
                    name=f"bench-subscriber-{name}",
                    daemon=True,
                )
                proc.start()
                child.close()
                subscribers[name] = (proc, parent)
            for proc, pipe in subscribers.values():
                _expect(pipe, proc)
            names = list(writers)
            for round_index, n in enumerate(per_round):
                first = ends[round_index] - n
                shift = round_index % len(names)
                for name in names[shift:] + names[:shift]:
                    write, committed = writers[name], []
                    for sample in range(first, first + n):
                        write(sample)
                        committed.append(time.time_ns())
                        time.sleep(LATENCY_GAP_S)
                    proc, pipe = subscribers[name]
                    delivered = _expect(pipe, proc)
                    # No lost, doubled or reordered events.
                    check([s for s, _ in delivered] == list(range(first, first + n)), name)
                    if round_index:  # round 0 is the warm-up
                        results[name].latencies_ns.extend(
                            at - sent for (_, at), sent in zip(delivered, committed, strict=True)
                        )
        finally:
            _stop_workers(list(subscribers.values()))
        return results

    def tail_reads(self) -> dict[str, Measurement]:
        """A follower's poll: one read of the log after its newest event, found empty.

        eventfold's read computes the log horizon: one index probe while no
        other transaction runs on the server, and one read of the lock table
        while one does (see ``--hold``).
        """
        raw, app, store = self.open_raw(), self.open_es(1), self.open_ef(max_size=1)
        raw.append("tail", [10] * 100, 0)
        account = EsAccount()
        for _ in range(100):
            account.deposit(10)
        app.save(account)
        store.append("tail", [Deposited(amount=10) for _ in range(100)])
        raw_last = raw.conn.execute("SELECT max(position) FROM events").fetchone()[0]
        es_last = app.recorder.max_notification_id()
        ef_last = store.last_position()

        def raw_op() -> None:
            rows = raw.conn.execute(RAW_READ_ALL, (raw_last, PAGE_SIZE)).fetchall()
            check(not rows, RAW)

        def es_op() -> None:
            rows = app.recorder.select_notifications(es_last, PAGE_SIZE, inclusive_of_start=False)
            check(not rows, ES)

        def ef_op() -> None:
            check(not list(store.read_all(after=ef_last, limit=PAGE_SIZE)), EF)

        return run_rounds(
            "tail read: an empty read after the newest event (a follower's poll)",
            f"hold={self.hold}",
            1,
            {RAW: raw_op, ES: es_op, EF: ef_op},
            count=self.counts.tail_reads,
            rounds=self.counts.rounds,
            warmup=50,
        )

    def pairs(self) -> dict[str, Measurement]:
        """Two streams appended atomically (a transfer): one transaction for both."""
        raw, app, store = self.open_raw(), self.open_es(1), self.open_ef(max_size=1)
        two = "eventfold, two appends"
        state = {"raw": 0, "ef": 0, "two": 0}
        left, right = EsAccount(), EsAccount()
        app.save(left, right)

        def raw_op() -> None:
            version = state["raw"]
            with raw.conn.transaction(), raw.conn.cursor() as cur:
                for stream in ("from", "to"):
                    cur.execute(RAW_VERSION, (stream,))
                    (actual,) = cur.fetchone()
                    check(actual == version, RAW)
                    cur.execute(
                        RAW_INSERT,
                        (stream, version + 1, uuid.uuid4(), DEPOSITED_TYPE, _encode({"amount": 1})),
                    )
            state["raw"] = version + 1

        def es_op() -> None:
            left.deposit(-1)
            right.deposit(1)
            app.save(left, right)

        def ef_op() -> None:
            version = state["ef"]
            store.append_many(
                [
                    StreamAppend("from", [Deposited(amount=-1)], expected=version),
                    StreamAppend("to", [Deposited(amount=1)], expected=version),
                ]
            )
            state["ef"] = version + 1

        def two_op() -> None:
            version = state["two"]
            store.append("from-2", [Deposited(amount=-1)], expected=version)
            store.append("to-2", [Deposited(amount=1)], expected=version)
            state["two"] = version + 1

        return run_rounds(
            "a transfer: one event to each of two streams, both or neither",
            "synchronous_commit=on",
            2,
            {RAW: raw_op, ES: es_op, EF: ef_op, two: two_op},
            count=self.counts.pairs,
            rounds=self.counts.rounds,
            warmup=20,
        )

    def read_all(self) -> dict[str, Measurement]:
        raw, app, store = self.open_raw(), self.open_es(), self.open_ef()
        total = self.counts.read_all_events
        chunk = 100
        version = ef_version = 0
        account = EsAccount()
        app.save(account)
        for _ in range(total // chunk):
            version = raw.append("big", [10] * chunk, version)
            ef_version = store.append(
                "big", [Deposited(amount=10) for _ in range(chunk)], expected=ef_version
            ).to_version
            for _ in range(chunk):
                account.deposit(10)
            app.save(account)
        expected_sum = 10 * total

        def raw_op() -> None:
            amount = sum(p["amount"] for p in raw.read_all())
            check(amount == expected_sum, RAW)

        reader = NotificationLogReader(app.notification_log, section_size=PAGE_SIZE)
        to_domain_event = app.mapper.to_domain_event

        def es_op() -> None:
            amount = 0
            for section in reader.select(start=1):
                for notification in section:
                    domain_event = to_domain_event(notification)
                    if type(domain_event) is ES_DEPOSITED:
                        amount += domain_event.amount
            check(amount == expected_sum, ES)

        def ef_op() -> None:
            amount = sum(e.data.amount for e in store.read_all() if type(e.data) is Deposited)
            check(amount == expected_sum, EF)

        return run_rounds(
            f"read_all {total:,} events + decode",
            "-",
            total,
            {RAW: raw_op, ES: es_op, EF: ef_op},
            count=self.counts.read_all_passes,
            rounds=min(self.counts.rounds, self.counts.read_all_passes),
            warmup=1,
        )


def _check_streams(
    raw: RawStore,
    app: EsBank,
    store: PostgresEventStore,
    streams: list[str],
    accounts: list[EsAccount],
    deposits: int,
    *,
    opened: bool = False,
) -> None:
    """Untimed: each stream holds exactly ``deposits`` deposits of 10, none lost, none doubled.

    eventsourcing's aggregates (and, with ``opened``, the other streams) start
    with one creation event.
    """
    first = 1 if opened else 0
    balance = 10 * deposits
    handler: CommandHandler[int, object] = CommandHandler(store, DECIDER)
    for stream, account in zip(streams, accounts, strict=True):
        version = first + deposits
        check(raw.count(stream) == (version, version), RAW)
        check(raw.load(stream) == (balance, version), RAW)
        loaded = handler.load(stream)
        check((loaded.state, loaded.version) == (balance, version), EF)
        events = list(store.read(stream))
        check([e.version for e in events] == list(range(1, version + 1)), EF)
        es_account = app.repository.get(account.id)
        check((es_account.balance, es_account.version) == (balance, 1 + deposits), ES)


# -- helper processes (spawned: they import this module afresh) -----------------------------


def _expect(pipe: Any, proc: Any, timeout: float = WORKER_TIMEOUT_S) -> Any:
    """The next message of a helper process; its traceback if it failed."""
    if not pipe.poll(timeout):
        raise RuntimeError(f"{proc.name} sent nothing for {timeout:.0f} s")
    message = pipe.recv()
    if isinstance(message, tuple) and message and message[0] == "error":
        raise RuntimeError(f"{proc.name} failed:\n{message[1]}")
    return message


def _stop_workers(workers: list[tuple[Any, Any]]) -> None:
    for _, pipe in workers:
        with suppress(OSError):
            pipe.send(None)
    for proc, pipe in workers:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
        pipe.close()


def _writer_process(w: int, pipe: Any, spec: dict[str, Any], es_id: uuid.UUID) -> None:
    """One writer of the processes scenario: on each (contender, k), append k events."""
    stream = f"p{w}"
    with ExitStack() as stack:
        try:
            raw = RawStore(spec["raw_url"], create=False)
            stack.callback(raw.close)
            app = EsBank(env=spec["es_env"])
            stack.callback(app.close)
            store = PostgresEventStore(spec["url"], schema=spec["ef_schema"], max_size=1)
            stack.callback(store.close)
            account = app.repository.get(es_id)
            raw_version = ef_version = 0
            pipe.send("ready")
            while (message := pipe.recv()) is not None:
                name, k = message
                if name == RAW:
                    for _ in range(k):
                        raw_version = raw.append(stream, [10], raw_version)
                elif name == ES:
                    for _ in range(k):
                        account.deposit(10)
                        app.save(account)
                else:
                    for _ in range(k):
                        ef_version = store.append(
                            stream, [Deposited(amount=10)], expected=ef_version
                        ).to_version
                pipe.send("done")
        except BaseException:
            with suppress(OSError):
                pipe.send(("error", traceback.format_exc()))
            raise


def _subscriber_process(name: str, pipe: Any, spec: dict[str, Any], flush_after: list[int]) -> None:
    """The subscriber of the latency scenario, for one contender.

    Takes ``time.time_ns()`` as soon as the consumer holds a decoded event. The
    writer's events carry their sample number as ``amount``; after the sample
    numbers in ``flush_after`` (the end of each round), it sends the (sample,
    time) pairs of the round to the parent, and stops after the last one.
    """
    flush, last = set(flush_after), flush_after[-1]
    received: list[tuple[int, int]] = []
    clock = time.time_ns

    def record(sample: int, at: int) -> bool:
        received.append((sample, at))
        if sample in flush:
            pipe.send(received.copy())
            received.clear()
        return sample == last

    try:
        if name == RAW:
            with (
                psycopg.connect(spec["raw_url"], autocommit=True) as listener,
                psycopg.connect(spec["raw_url"], autocommit=True) as reader,
                reader.cursor(binary=True) as cur,
            ):
                listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(spec["channel"])))
                pipe.send("ready")
                after, done = 0, False
                while not done:
                    rows = cur.execute(RAW_READ_ALL, (after, PAGE_SIZE)).fetchall()
                    for row in rows:
                        payload = _decode(row[6])
                        at = clock()
                        after = row[0]
                        if row[4] == DEPOSITED_TYPE:
                            done = record(payload["amount"], at)
                    if not done and len(rows) < PAGE_SIZE:
                        for _ in listener.notifies(timeout=5.0, stop_after=1):
                            pass
        elif name == ES:
            app = EsBank(env=spec["es_env"])
            try:
                with ApplicationSubscription(app, gt=None) as subscription:
                    pipe.send("ready")
                    for domain_event, _ in subscription:
                        at = clock()
                        if type(domain_event) is ES_DEPOSITED and record(domain_event.amount, at):
                            break
            finally:
                app.close()
        else:
            store = PostgresEventStore(spec["url"], schema=spec["schema"], max_size=2)
            try:
                pipe.send("ready")
                events = store.subscribe(after=0)
                for event in events:
                    at = clock()
                    if type(event.data) is Deposited and record(event.data.amount, at):
                        break
                events.close()
            finally:
                store.close()
    except BaseException:
        with suppress(OSError):
            pipe.send(("error", traceback.format_exc()))
        raise


# -- command line ---------------------------------------------------------------------------


SCENARIOS = (
    "append_1",
    "append_10",
    "append_100",
    "concurrent",
    "processes",
    "hot_stream",
    "load_stream",
    "read_all",
    "tail_reads",
    "pairs",
    "subscriber_latency",
)
HOLDS = ("none", "other-database", "same-database")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    add_conninfo_argument(parser)
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help=f"comma-separated scenarios to run (default all: {', '.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--hold",
        choices=HOLDS,
        default="none",
        help="leave an unrelated write transaction open for the whole run: in another "
        "database of the server, or in the benchmark's own database (it never appends)",
    )


@contextmanager
def _held(admin_url: str, url: str, hold: str) -> Iterator[None]:
    """An idle-in-transaction session with a transaction id, as ``--hold`` asks."""
    if hold == "none":
        yield
        return
    with psycopg.connect(admin_url if hold == "other-database" else url) as conn:
        conn.execute("CREATE TEMP TABLE held (a int)")
        conn.execute("INSERT INTO held VALUES (1)")  # a transaction id, kept open
        try:
            yield
        finally:
            conn.rollback()


def _report_throughput(results: dict[str, Measurement]) -> dict[str, Any]:
    ratio_values = ratios(results, EF, [RAW, ES])
    first = next(iter(results.values()))
    print_table(first.scenario, results, ratio_values)
    if "conflicts" in first.extra:
        text = "   ".join(
            f"{m.contender} {m.extra['conflicts']} ({m.extra['conflicts_per_append']:.3f}/append)"
            for m in results.values()
        )
        print(f"conflicts (each one a retry): {text}")
    return record(results, ratio_values)


def _report_latency(results: dict[str, Measurement]) -> dict[str, Any]:
    ratio_values = latency_ratios(results, EF, [RAW, ES])
    first = next(iter(results.values()))
    print_latency_table(first.scenario, results, ratio_values)
    print(
        "subscribers: raw = LISTEN connection + SELECT of the rows after the last seen position;"
        " eventsourcing = eventsourcing.projection.ApplicationSubscription (PostgresSubscription,"
        " LISTEN/NOTIFY); eventfold = PostgresEventStore.subscribe()"
    )
    return latency_record(results, ratio_values, mean=True)


def run(args: argparse.Namespace) -> int:
    counts = QUICK_COUNTS if args.quick else FULL_COUNTS
    info = system_info(
        eventfold=eventfold.__version__,
        eventsourcing=importlib.metadata.version("eventsourcing"),
        psycopg=psycopg.__version__,
        quick=bool(args.quick),
    )
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    info["hold"] = args.hold
    with scratch_database(conninfo(args)) as url, ExitStack() as stack_outer:
        with psycopg.connect(url) as conn:
            server = conn.info.server_version
            info["postgres"] = f"{server // 10000}.{server % 10000}"
        print(
            f"eventfold {info['eventfold']} | eventsourcing {info['eventsourcing']} | "
            f"PostgreSQL {info['postgres']} | psycopg {info['psycopg']} | "
            f"Python {info['python']} | {info['cpus']} CPUs | {'quick' if args.quick else 'full'} run"
        )
        bench = Bench(url, counts, args.hold)
        every: dict[str, Callable[[], dict[str, Measurement]]] = {
            "append_1": lambda: bench.appends(1, counts.append_1),
            "append_10": lambda: bench.appends(10, counts.append_10),
            "append_100": lambda: bench.appends(100, counts.append_100),
            "concurrent": bench.concurrent,
            "processes": bench.processes,
            "hot_stream": bench.hot_stream,
            "load_stream": bench.load_stream,
            "read_all": bench.read_all,
            "tail_reads": bench.tail_reads,
            "pairs": bench.pairs,
            "subscriber_latency": bench.subscriber_latency,
        }
        wanted = args.only.split(",") if args.only else list(SCENARIOS)
        unknown = sorted(set(wanted) - set(every))
        if unknown:
            raise SystemExit(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
        if args.hold != "none":
            print(f"an unrelated write transaction stays open in {args.hold} for the whole run")
        stack_outer.enter_context(_held(conninfo(args), url, args.hold))
        for step in [every[name] for name in wanted]:
            with ExitStack() as bench.stack:
                results = step()
            gc.collect()
            if step == bench.subscriber_latency:
                records.append(_report_latency(results))
            else:
                records.append(_report_throughput(results))
    return finish(args, info, started, records)


def main(argv: list[str] | None = None) -> int:
    return suite_main("postgres", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
