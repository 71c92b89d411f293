"""PostgreSQL benchmark: raw psycopg vs eventsourcing 9.5.6 vs eventfold, same run.

Run with ``python -m benchmarks postgres [--quick] [--json PATH] [--conninfo URL]``.
A scratch database is created on the server named by ``--conninfo`` (a role
allowed to CREATE DATABASE) and dropped at the end. Scenarios: one writer
appending 1, 10 and 100 events per transaction; 8 writer threads appending to
distinct streams; read_all of the whole log with decoding.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import msgspec

from benchmarks._harness import (
    Measurement,
    print_table,
    ratios,
    run_rounds,
    system_info,
    write_json,
)

try:
    import psycopg
    from psycopg import sql
except ImportError as exc:  # pragma: no cover - a setup problem, not a benchmark result
    raise SystemExit(
        "the PostgreSQL benchmark needs psycopg: pip install 'eventfold[postgres]'"
    ) from exc
try:
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate as EsAggregate
    from eventsourcing.domain import event as es_event
    from eventsourcing.system import NotificationLogReader
except ImportError as exc:  # pragma: no cover
    raise SystemExit(
        "the PostgreSQL benchmark compares against eventsourcing==9.5.6: pip install 'eventfold[bench]'"
    ) from exc

import eventfold
from eventfold import Event
from eventfold.store.postgres import PostgresEventStore, migrate

RAW, ES, EF = "raw-psycopg", "eventsourcing", "eventfold"
PAGE_SIZE = 500
WRITERS = 8


@dataclass(frozen=True)
class Counts:
    append_1: int
    append_10: int
    append_100: int
    concurrent_bursts: int  # each burst: WRITERS threads x burst_appends appends
    burst_appends: int
    read_all_events: int
    read_all_passes: int
    rounds: int


FULL_COUNTS = Counts(3_000, 1_000, 200, 30, 20, 50_000, 6, 5)
QUICK_COUNTS = Counts(300, 100, 20, 4, 10, 5_000, 3, 3)


class Deposited(Event):
    __event_type__ = "bench.pg.Deposited"  # distinct from the SQLite suite's class
    amount: int


class EsAccount(EsAggregate):
    @es_event("Opened")
    def __init__(self) -> None:
        self.balance = 0

    @es_event("Deposited")
    def deposit(self, amount: int) -> None:
        self.balance += amount


ES_DEPOSITED: type[Any] = EsAccount.Deposited  # type: ignore[attr-defined]


class EsBank(Application):
    log_section_size = PAGE_SIZE


# -- raw psycopg: the same table and indexes as eventfold, a plain transaction per append ---

RAW_SCHEMA = """
CREATE TABLE events (
    position       bigserial PRIMARY KEY,
    stream         text      NOT NULL,
    version        bigint    NOT NULL,
    id             uuid      NOT NULL UNIQUE,
    type           text      NOT NULL,
    schema_version integer   NOT NULL,
    data           bytea     NOT NULL,
    metadata       bytea,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream, version)
)
"""
RAW_VERSION = "SELECT coalesce(max(version), 0) FROM events WHERE stream = %s"
RAW_INSERT = (
    "INSERT INTO events (stream, version, id, type, schema_version, data) "
    "VALUES (%s, %s, %s, %s, 1, %s)"
)
RAW_READ_ALL = (
    "SELECT position, stream, version, id, type, schema_version, data, metadata "
    "FROM events WHERE position > %s ORDER BY position LIMIT %s"
)
_encode = msgspec.json.encode
_decode = msgspec.json.decode


class RawStore:
    """A careful hand-written psycopg event table: check version, insert, commit."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(RAW_SCHEMA)

    def append(self, stream: str, amounts: list[int], expected: int, conn: Any = None) -> int:
        conn = conn or self.conn
        rows = [(uuid.uuid4(), _encode({"amount": a})) for a in amounts]
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(RAW_VERSION, (stream,))
            (actual,) = cur.fetchone()
            if actual != expected:
                raise RuntimeError(f"{stream}: expected {expected}, found {actual}")
            cur.executemany(
                RAW_INSERT,
                [
                    (stream, actual + i, eid, "bench.Deposited", d)
                    for i, (eid, d) in enumerate(rows, 1)
                ],
            )
        return actual + len(rows)

    def read_all(self) -> Iterator[dict[str, Any]]:
        after = 0
        with self.conn.cursor(binary=True) as cur:
            while True:
                rows = cur.execute(RAW_READ_ALL, (after, PAGE_SIZE)).fetchall()
                for row in rows:
                    yield _decode(row[6])
                if len(rows) < PAGE_SIZE:
                    return
                after = rows[-1][0]

    def close(self) -> None:
        self.conn.close()


# -- the scratch database -------------------------------------------------------------------


@contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    name = f"eventfold_bench_{os.getpid()}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


class Bench:
    """Owns the stores of each contender, each in its own schema of one scratch database."""

    def __init__(self, url: str, counts: Counts, stack: ExitStack) -> None:
        self.url = url
        self.counts = counts
        self.stack = stack
        self._n = 0

    def _schema(self, label: str) -> str:
        self._n += 1
        return f"{label}_{self._n}"

    def open_raw(self) -> RawStore:
        schema = self._schema("raw")
        url = psycopg.conninfo.make_conninfo(self.url, options=f"-c search_path={schema}")
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        store = RawStore(url)
        store.url = url  # type: ignore[attr-defined]
        self.stack.callback(store.close)
        return store

    def open_es(self) -> EsBank:
        params = psycopg.conninfo.conninfo_to_dict(self.url)
        schema = self._schema("es")
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        app = EsBank(
            env={
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_DBNAME": str(params.get("dbname", "postgres")),
                "POSTGRES_HOST": str(params.get("host", "127.0.0.1")),
                "POSTGRES_PORT": str(params.get("port", "5432")),
                "POSTGRES_USER": str(params.get("user", "postgres")),
                "POSTGRES_PASSWORD": str(params.get("password", "")),
                "POSTGRES_SCHEMA": schema,
                "POSTGRES_POOL_SIZE": str(WRITERS),
            }
        )
        self.stack.callback(app.close)
        return app

    def open_ef(self) -> PostgresEventStore:
        schema = self._schema("ef")
        migrate(self.url, schema=schema)
        store = PostgresEventStore(self.url, schema=schema, max_size=WRITERS)
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
        raw_conns = [psycopg.connect(raw.url, autocommit=True) for _ in range(WRITERS)]  # type: ignore[attr-defined]
        for conn in raw_conns:
            self.stack.callback(conn.close)
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

        return run_rounds(
            f"{WRITERS} writers x {k} appends of 1 event, distinct streams",
            "synchronous_commit=on",
            WRITERS * k,
            {RAW: burst(raw_work), ES: burst(es_work), EF: burst(ef_work)},
            count=self.counts.concurrent_bursts,
            rounds=self.counts.rounds,
            warmup=1,
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
            _check(amount == expected_sum, RAW)

        reader = NotificationLogReader(app.notification_log, section_size=PAGE_SIZE)
        to_domain_event = app.mapper.to_domain_event

        def es_op() -> None:
            amount = 0
            for section in reader.select(start=1):
                for notification in section:
                    domain_event = to_domain_event(notification)
                    if type(domain_event) is ES_DEPOSITED:
                        amount += domain_event.amount
            _check(amount == expected_sum, ES)

        def ef_op() -> None:
            amount = sum(e.data.amount for e in store.read_all() if type(e.data) is Deposited)
            _check(amount == expected_sum, EF)

        return run_rounds(
            f"read_all {total:,} events + decode",
            "-",
            total,
            {RAW: raw_op, ES: es_op, EF: ef_op},
            count=self.counts.read_all_passes,
            rounds=min(self.counts.rounds, self.counts.read_all_passes),
            warmup=1,
        )


def _check(ok: bool, contender: str) -> None:
    if not ok:
        raise RuntimeError(f"{contender} read back something else than was written")


# -- command line ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument(
        "--conninfo",
        default=os.environ.get(
            "EVENTFOLD_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="server to use (a role that may CREATE DATABASE); a scratch database is made there",
    )


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
    with scratch_database(args.conninfo) as url, ExitStack() as stack:
        with psycopg.connect(url) as conn:
            server = conn.info.server_version
            info["postgres"] = f"{server // 10000}.{server % 10000}"
        print(
            f"eventfold {info['eventfold']} | eventsourcing {info['eventsourcing']} | "
            f"PostgreSQL {info['postgres']} | psycopg {info['psycopg']} | "
            f"Python {info['python']} | {info['cpus']} CPUs | {'quick' if args.quick else 'full'} run"
        )
        bench = Bench(url, counts, stack)
        steps: list[Callable[[], dict[str, Measurement]]] = [
            lambda: bench.appends(1, counts.append_1),
            lambda: bench.appends(10, counts.append_10),
            lambda: bench.appends(100, counts.append_100),
            bench.concurrent,
            bench.read_all,
        ]
        for step in steps:
            results = step()
            gc.collect()
            ratio_values = ratios(results, EF, [RAW, ES])
            first = next(iter(results.values()))
            print_table(first.scenario, results, ratio_values)
            records.append(
                {
                    "scenario": first.scenario,
                    "results": [m.as_dict() for m in results.values()],
                    "ratios": {k: round(v, 3) for k, v in ratio_values.items()},
                }
            )
    elapsed = time.perf_counter() - started
    print(f"\ntotal {elapsed:.1f} s; ratios > 1 mean eventfold has the higher throughput")
    if args.json:
        write_json(
            args.json, {"system": info, "elapsed_s": round(elapsed, 2), "scenarios": records}
        )
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks postgres", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
