"""SQLite benchmark: raw sqlite3 vs eventsourcing 9.5.6 vs eventfold, same run.

Run with ``python -m benchmarks sqlite [--quick] [--json PATH] [--durability ...]``.
See ``benchmarks/README.md`` for what each contender does per operation.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from benchmarks._common import (
    DECIDER,
    DEPOSITED_TYPE,
    ES_DEPOSITED,
    OPENED_TYPE,
    PAGE_SIZE,
    STREAM_EVENTS,
    SYNCHRONOUS,
    Deposited,
    EsAccount,
    EsBank,
    Opened,
    add_common_arguments,
    check,
    es_sqlite_env,
    finish,
    pages,
    suite_main,
)
from benchmarks._harness import Measurement, print_table, ratios, record, run_rounds, system_info

try:
    from eventsourcing.system import NotificationLogReader
except ImportError as exc:  # pragma: no cover - a setup problem, not a benchmark result
    raise SystemExit(
        "the SQLite benchmark compares against eventsourcing==9.5.6: pip install 'eventfold[bench]'"
    ) from exc

import eventfold
from eventfold import CommandHandler, SqliteEventStore
from eventfold.snapshots import SnapshotPolicy

RAW, ES, EF = "raw-sqlite3", "eventsourcing", "eventfold"
ES_SNAP, EF_SNAP = "eventsourcing+snap", "eventfold+snap"
CONTENDERS = (RAW, ES, EF)
LONG_STREAM_EVENTS = 10_000  # the stream of the snapshot scenario (1 opened + 9,999 deposits)
SNAPSHOT_TAIL = 10  # events written after the snapshot: a snapshot load reads these
SNAPSHOT_EVERY = 1_000  # eventfold's policy; only handle() consults it, loads do not
SETUP_BATCH = 500  # events per transaction when filling databases (untimed)


@dataclass(frozen=True)
class Counts:
    append_1: int
    append_1_full: int
    append_10: int
    append_100: int
    load: int
    load_long: int  # loads of the LONG_STREAM_EVENTS stream, per contender
    read_all_streams: int  # read database: this many streams of STREAM_EVENTS events
    read_all_passes: int
    rounds: int  # contenders alternate this many times (order rotates)


FULL_COUNTS = Counts(
    append_1=20_000,
    append_1_full=3_000,
    append_10=5_000,
    append_100=600,
    load=200,
    load_long=100,
    read_all_streams=20,
    read_all_passes=12,
    rounds=10,
)
QUICK_COUNTS = Counts(
    append_1=2_000,
    append_1_full=300,
    append_10=500,
    append_100=60,
    load=30,
    load_long=10,
    read_all_streams=5,
    read_all_passes=6,
    rounds=5,
)


def make_es_app(path: Path, durability: str, *, snapshotting: bool = False) -> EsBank:
    return EsBank(env=es_sqlite_env(path, durability, snapshotting=snapshotting))


# -- raw sqlite3: the same table, indexes and pragmas as eventfold --------------------------

RAW_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    stream         TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    id             BLOB    NOT NULL,
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    data           BLOB    NOT NULL,
    metadata       BLOB,
    recorded_at    INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_stream_version ON events (stream, version);
CREATE UNIQUE INDEX IF NOT EXISTS events_id ON events (id);
"""
RAW_VERSION = "SELECT coalesce(max(version), 0) FROM events WHERE stream = ?"
RAW_INSERT = (
    "INSERT INTO events (stream, version, id, type, schema_version, data, metadata, recorded_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
RAW_COLUMNS = "position, stream, version, id, type, schema_version, data, metadata, recorded_at"
RAW_READ_STREAM = f"SELECT {RAW_COLUMNS} FROM events WHERE stream = ? ORDER BY version"
RAW_READ_ALL = f"SELECT {RAW_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?"


_json_encode = msgspec.json.encode
_json_decode = msgspec.json.decode


def _time_ordered_id() -> bytes:
    """16 bytes: microsecond timestamp then 8 random bytes (UUIDv7-like ordering).

    Time-ordered like eventfold's UUIDv7, so both unique ``id`` indexes grow at
    their right edge; random ids (uuid4) would scatter inserts over the index.
    """
    return (time.time_ns() // 1000).to_bytes(8, "big") + os.urandom(8)


class RawStore:
    """What a careful hand-written sqlite3 event table does, and nothing more.

    It uses the same JSON codec as eventfold (msgspec), so the eventfold/raw
    ratio measures eventfold's own overhead, not a faster codec.
    """

    def __init__(self, path: Path, durability: str) -> None:
        self.path = str(path)
        self.conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, cached_statements=64, timeout=5.0
        )
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={SYNCHRONOUS[durability]}")
        self.conn.executescript(RAW_SCHEMA)

    def append(
        self, stream: str, type_name: str, payloads: list[dict[str, Any]], expected: int
    ) -> int:
        """Encode, then check the expected version and insert in one write transaction."""
        encoded = [(_time_ordered_id(), _json_encode(p)) for p in payloads]
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            (actual,) = conn.execute(RAW_VERSION, (stream,)).fetchone()
            if actual != expected:
                raise RuntimeError(f"{stream}: expected version {expected}, found {actual}")
            now = time.time_ns() // 1000
            if len(encoded) == 1:
                event_id, data = encoded[0]
                conn.execute(
                    RAW_INSERT, (stream, actual + 1, event_id, type_name, 1, data, None, now)
                )
            else:
                conn.executemany(
                    RAW_INSERT,
                    [
                        (stream, actual + i, event_id, type_name, 1, data, None, now)
                        for i, (event_id, data) in enumerate(encoded, 1)
                    ],
                )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return actual + len(encoded)

    def load(self, stream: str) -> tuple[int, int]:
        """SELECT the stream, JSON-decode every payload, fold: (balance, version)."""
        balance = version = 0
        loads = _json_decode
        for row in self.conn.execute(RAW_READ_STREAM, (stream,)).fetchall():
            payload = loads(row[6])
            if row[4] == DEPOSITED_TYPE:
                balance += payload["amount"]
            version = row[2]
        return balance, version

    def read_all(self) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
        """Paged SELECT over the global log, decoding payload (and metadata if any)."""
        loads = _json_decode
        execute = self.conn.execute
        for rows in pages(lambda after, size: execute(RAW_READ_ALL, (after, size)).fetchall()):
            for row in rows:
                if row[7] is not None:
                    loads(row[7])
                yield row, loads(row[6])

    def close(self) -> None:
        self.conn.close()


# -- scenarios -----------------------------------------------------------------------------


class Bench:
    """Owns the temp directory and every store opened in it."""

    def __init__(self, counts: Counts, stack: ExitStack) -> None:
        self.counts = counts
        self.stack = stack
        self.dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="eventfold-bench-")))
        self._files = 0

    def _path(self, label: str) -> Path:
        self._files += 1
        return self.dir / f"{self._files:02d}-{label}.db"

    def open_raw(self, durability: str) -> RawStore:
        store = RawStore(self._path("raw"), durability)
        self.stack.callback(store.close)
        return store

    def open_es(self, durability: str, *, snapshotting: bool = False) -> EsBank:
        app = make_es_app(
            self._path("es-snap" if snapshotting else "es"), durability, snapshotting=snapshotting
        )
        self.stack.callback(app.close)
        return app

    def open_ef(self, durability: str, label: str = "ef") -> SqliteEventStore:
        store = SqliteEventStore(self._path(label), durability=durability)  # type: ignore[arg-type]
        self.stack.callback(store.close)
        return store

    # (1)-(3) single writer appends ------------------------------------------------------

    def appends(self, batch: int, durability: str, count: int) -> dict[str, Measurement]:
        raw, app, store = (
            self.open_raw(durability),
            self.open_es(durability),
            self.open_ef(durability),
        )

        raw_version = 0

        def raw_op() -> None:
            nonlocal raw_version
            raw_version = raw.append(
                "account-1", DEPOSITED_TYPE, [{"amount": 10} for _ in range(batch)], raw_version
            )

        account = EsAccount()
        app.save(account)

        def es_op() -> None:
            for _ in range(batch):
                account.deposit(10)
            app.save(account)

        ef_version = 0

        def ef_op() -> None:
            nonlocal ef_version
            result = store.append(
                "account-1", [Deposited(amount=10) for _ in range(batch)], expected=ef_version
            )
            ef_version = result.to_version

        warmup = max(5, min(200, count // 10))
        return run_rounds(
            f"append {batch} event{'s' if batch > 1 else ''}/txn",
            durability,
            batch,
            {RAW: raw_op, ES: es_op, EF: ef_op},
            count=count,
            rounds=self.counts.rounds,
            warmup=warmup,
        )

    # (4)-(5) read scenarios, on one pre-filled database per contender ----------------------

    def fill_read_databases(
        self, durability: str
    ) -> tuple[RawStore, EsBank, SqliteEventStore, list[str], list[uuid.UUID]]:
        raw, app, store = (
            self.open_raw(durability),
            self.open_es(durability),
            self.open_ef(durability),
        )
        streams: list[str] = []
        es_ids: list[uuid.UUID] = []
        chunk = 100
        for n in range(self.counts.read_all_streams):
            stream = f"account-{n}"
            streams.append(stream)
            version = raw.append(stream, OPENED_TYPE, [{}], 0)
            ef_version = store.append(stream, [Opened()], expected=0).to_version
            account = EsAccount()
            app.save(account)
            es_ids.append(account.id)
            remaining = STREAM_EVENTS - 1
            while remaining:
                k = min(chunk, remaining)
                remaining -= k
                version = raw.append(stream, DEPOSITED_TYPE, [{"amount": 10}] * k, version)
                ef_version = store.append(
                    stream, [Deposited(amount=10) for _ in range(k)], expected=ef_version
                ).to_version
                for _ in range(k):
                    account.deposit(10)
                app.save(account)
        _checkpoint(raw.path, _es_path(app), store.path)
        return raw, app, store, streams, es_ids

    def load_stream(
        self,
        durability: str,
        raw: RawStore,
        app: EsBank,
        store: SqliteEventStore,
        streams: list[str],
        es_ids: list[uuid.UUID],
    ) -> dict[str, Measurement]:
        expected_balance = 10 * (STREAM_EVENTS - 1)
        handler: CommandHandler[int, object] = CommandHandler(store, DECIDER)
        turn = {RAW: 0, ES: 0, EF: 0}

        def pick(name: str) -> int:
            turn[name] += 1
            return turn[name] % len(streams)

        def raw_op() -> None:
            balance, version = raw.load(streams[pick(RAW)])
            check(balance == expected_balance and version == STREAM_EVENTS, RAW)

        def es_op() -> None:
            account = app.repository.get(es_ids[pick(ES)])
            check(account.balance == expected_balance and account.version == STREAM_EVENTS, ES)

        def ef_op() -> None:
            loaded = handler.load(streams[pick(EF)])
            check(loaded.state == expected_balance and loaded.version == STREAM_EVENTS, EF)

        return run_rounds(
            f"load+fold {STREAM_EVENTS}-event stream",
            durability,
            STREAM_EVENTS,
            {RAW: raw_op, ES: es_op, EF: ef_op},
            count=self.counts.load,
            rounds=self.counts.rounds,
            warmup=3,
        )

    def read_all(
        self, durability: str, raw: RawStore, app: EsBank, store: SqliteEventStore
    ) -> dict[str, Measurement]:
        total_events = self.counts.read_all_streams * STREAM_EVENTS
        expected_sum = self.counts.read_all_streams * 10 * (STREAM_EVENTS - 1)

        def raw_op() -> None:
            seen = amount = 0
            for row, payload in raw.read_all():
                seen += 1
                if row[4] == DEPOSITED_TYPE:
                    amount += payload["amount"]
            check(seen == total_events and amount == expected_sum, RAW)

        reader = NotificationLogReader(app.notification_log, section_size=PAGE_SIZE)
        to_domain_event = app.mapper.to_domain_event

        def es_op() -> None:
            seen = amount = 0
            for section in reader.select(start=1):
                for notification in section:
                    domain_event = to_domain_event(notification)
                    seen += 1
                    if type(domain_event) is ES_DEPOSITED:
                        amount += domain_event.amount
            check(seen == total_events and amount == expected_sum, ES)

        def ef_op() -> None:
            seen = amount = 0
            for recorded in store.read_all():
                seen += 1
                data = recorded.data
                if type(data) is Deposited:
                    amount += data.amount
            check(seen == total_events and amount == expected_sum, EF)

        return run_rounds(
            f"read_all {total_events:,} events + decode",
            durability,
            total_events,
            {RAW: raw_op, ES: es_op, EF: ef_op},
            count=self.counts.read_all_passes,
            rounds=min(self.counts.rounds, self.counts.read_all_passes),
            warmup=1,
        )

    # (6) load of a long stream, with and without snapshot -----------------------------------

    def load_snapshots(self, durability: str) -> dict[str, Measurement]:
        """Load a LONG_STREAM_EVENTS stream: folded from event 1, or from a snapshot.

        Each contender has its own file holding one stream of the same events:
        1 opened, then deposits. The two "+snap" contenders save a snapshot after
        ``LONG_STREAM_EVENTS - SNAPSHOT_TAIL`` events and then get the last
        SNAPSHOT_TAIL events, so their load reads a snapshot and SNAPSHOT_TAIL
        events. Writing is setup, in SETUP_BATCH-event transactions, not timed.
        """
        total, tail = LONG_STREAM_EVENTS, SNAPSHOT_TAIL
        head = total - tail
        stream = "account-1"
        raw = self.open_raw(durability)
        es, es_snap = self.open_es(durability), self.open_es(durability, snapshotting=True)
        ef, ef_snap = self.open_ef(durability), self.open_ef(durability, "ef-snap")
        handler: CommandHandler[int, object] = CommandHandler(ef, DECIDER)
        snap_handler: CommandHandler[int, object] = CommandHandler(
            ef_snap, DECIDER, snapshots=SnapshotPolicy(every=SNAPSHOT_EVERY)
        )

        raw_version = raw.append(stream, OPENED_TYPE, [{}], 0)
        ef_versions = {
            s: s.append(stream, [Opened()], expected=0).to_version for s in (ef, ef_snap)
        }
        accounts = {app: EsAccount() for app in (es, es_snap)}
        for app, account in accounts.items():
            app.save(account)

        def write(deposits: int) -> None:
            nonlocal raw_version
            while deposits:
                k = min(SETUP_BATCH, deposits)
                deposits -= k
                raw_version = raw.append(stream, DEPOSITED_TYPE, [{"amount": 10}] * k, raw_version)
                for s in (ef, ef_snap):
                    ef_versions[s] = s.append(
                        stream, [Deposited(amount=10) for _ in range(k)], expected=ef_versions[s]
                    ).to_version
                for app, account in accounts.items():
                    for _ in range(k):
                        account.deposit(10)
                    app.save(account)

        write(head - 1)
        # The snapshots, at the same version for both libraries.
        check(snap_handler.rebuild_snapshot(stream) == head, EF_SNAP)
        es_snap.take_snapshot(accounts[es_snap].id)
        write(tail)
        _checkpoint(raw.path, _es_path(es), _es_path(es_snap), ef.path, ef_snap.path)

        # Untimed checks: each contender's load gives the right state, and the
        # "+snap" contenders have their snapshot where it was put.
        policy = snap_handler.snapshots
        snapshot = ef_snap.load_snapshot(stream)
        check(
            snapshot is not None
            and policy is not None
            and snapshot.version == head
            and snapshot.state_type == policy.state_type
            and snapshot.schema_version == policy.schema_version,
            EF_SNAP,
        )
        if es_snap.snapshots is None:
            raise RuntimeError(f"{ES_SNAP} has no snapshot store")
        es_snapshots = list(es_snap.snapshots.get(accounts[es_snap].id, desc=True, limit=1))
        check(len(es_snapshots) == 1 and es_snapshots[0].originator_version == head, ES_SNAP)
        check(es.snapshots is None, ES)
        expected_balance = 10 * (total - 1)
        check(raw.load(stream) == (expected_balance, total), RAW)
        for name, app in ((ES, es), (ES_SNAP, es_snap)):
            account = app.repository.get(accounts[app].id)
            check(account.balance == expected_balance and account.version == total, name)
        for name, h in ((EF, handler), (EF_SNAP, snap_handler)):
            loaded = h.load(stream)
            check(loaded.state == expected_balance and loaded.version == total, name)

        es_id, es_snap_id = accounts[es].id, accounts[es_snap].id
        return run_rounds(
            f"load {total:,}-event stream, with and without snapshot (at {head:,}, +{tail})",
            durability,
            total,
            {
                RAW: lambda: raw.load(stream),
                ES: lambda: es.repository.get(es_id),
                ES_SNAP: lambda: es_snap.repository.get(es_snap_id),
                EF: lambda: handler.load(stream),
                EF_SNAP: lambda: snap_handler.load(stream),
            },
            count=self.counts.load_long,
            rounds=min(self.counts.rounds, self.counts.load_long),
            warmup=2,
        )


def _es_path(app: EsBank) -> str:
    return app.factory.datastore.pool.db_name  # type: ignore[attr-defined,no-any-return]


def _checkpoint(*paths: str) -> None:
    """The files were just written: checkpoint so every contender reads a settled file."""
    for path in paths:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()


def scenario_ratios(results: dict[str, Measurement]) -> dict[str, float]:
    """eventfold against the others; the snapshot scenario pairs like with like."""
    if EF_SNAP in results:
        return {
            **ratios(results, EF_SNAP, [ES_SNAP]),
            **ratios(results, EF, [ES]),
            **ratios(results, EF_SNAP, [EF]),
            **ratios(results, EF, [RAW]),
        }
    return ratios(results, EF, [RAW, ES])


# -- command line --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, "small counts (a smoke run, under 20 s)")
    parser.add_argument(
        "--durability",
        choices=("full", "normal", "both"),
        default="both",
        help=(
            "PRAGMA synchronous for every contender: 'normal' or 'full' for all scenarios; "
            "'both' (default) runs all scenarios with normal and 1-event appends also with full"
        ),
    )


def run(args: argparse.Namespace) -> int:
    counts = QUICK_COUNTS if args.quick else FULL_COUNTS
    main = "full" if args.durability == "full" else "normal"
    extra_full = args.durability == "both"
    plan: list[tuple[str, Callable[[Bench], list[dict[str, Measurement]]]]] = [
        (
            "append-1",
            lambda b: [
                b.appends(1, main, counts.append_1 if main == "normal" else counts.append_1_full)
            ],
        ),
    ]
    if extra_full:
        plan.append(("append-1-full", lambda b: [b.appends(1, "full", counts.append_1_full)]))
    plan += [
        ("append-10", lambda b: [b.appends(10, main, counts.append_10)]),
        ("append-100", lambda b: [b.appends(100, main, counts.append_100)]),
        ("reads", lambda b: _reads(b, main)),
        ("snapshots", lambda b: [b.load_snapshots(main)]),
    ]

    info = system_info(
        eventfold=eventfold.__version__,
        eventsourcing=importlib.metadata.version("eventsourcing"),
        durability=args.durability,
        quick=bool(args.quick),
    )
    print(
        f"eventfold {info['eventfold']} | eventsourcing {info['eventsourcing']} | "
        f"SQLite {info['sqlite']} | Python {info['python']} | {info['cpus']} CPUs | "
        f"{'quick' if args.quick else 'full'} run, WAL, durability={args.durability}"
    )
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    with ExitStack() as stack:
        bench = Bench(counts, stack)
        for _, step in plan:
            for results in step(bench):
                gc.collect()
                ratio_values = scenario_ratios(results)
                first = next(iter(results.values()))
                title = f"{first.scenario}  [synchronous={SYNCHRONOUS[first.durability]}]"
                print_table(title, results, ratio_values)
                records.append(record(results, ratio_values, durability=first.durability))
    return finish(args, info, started, records)


def _reads(bench: Bench, durability: str) -> list[dict[str, Measurement]]:
    raw, app, store, streams, es_ids = bench.fill_read_databases(durability)
    return [
        bench.load_stream(durability, raw, app, store, streams, es_ids),
        bench.read_all(durability, raw, app, store),
    ]


def main(argv: list[str] | None = None) -> int:
    return suite_main("sqlite", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
