"""What the suites share: the domain (written once per library), eventsourcing on
SQLite, paging, checks and the command line around a suite's ``run``.

Nothing here needs psycopg; the PostgreSQL pieces are in :mod:`benchmarks._postgres`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

try:
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate as EsAggregate
    from eventsourcing.domain import event as es_event
    from eventsourcing.sqlite import SQLiteConnection, SQLiteConnectionPool, SQLiteFactory
except ImportError as exc:  # pragma: no cover - a setup problem, not a benchmark result
    raise SystemExit(
        "the benchmarks compare against eventsourcing==9.5.6: pip install 'eventfold[bench]'"
    ) from exc

from benchmarks._harness import write_json
from eventfold import Decider, Event

PAGE_SIZE = 500  # eventfold's default page and batch size; raw and eventsourcing page alike
STREAM_EVENTS = 1_000  # a load scenario's streams: 1 "opened", then 999 deposits
SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}
DEPOSITED_TYPE, OPENED_TYPE = "bench.Deposited", "bench.Opened"  # the raw contenders' types


# -- the domain, written once per library -------------------------------------------------


class Opened(Event):
    __event_type__ = OPENED_TYPE


class Deposited(Event):
    __event_type__ = DEPOSITED_TYPE
    amount: int


def _evolve(balance: int, event: object) -> int:
    if type(event) is Deposited:
        return balance + event.amount
    return balance


def _decide(command: object, balance: int) -> list[Event]:
    return [Deposited(amount=10)]


DECIDER: Decider[int, object, Event] = Decider(_decide, _evolve, int)
DEPOSIT = object()  # the one command: decide() answers it with Deposited(amount=10)


class EsAccount(EsAggregate):
    """The eventsourcing twin of the eventfold stream: declarative @event style."""

    @es_event("Opened")
    def __init__(self) -> None:
        self.balance = 0

    @es_event("Deposited")
    def deposit(self, amount: int) -> None:
        self.balance += amount


ES_DEPOSITED: type[Any] = EsAccount.Deposited  # type: ignore[attr-defined]


class EsBank(Application):
    # One notification-log query returns up to this many events, like eventfold's page.
    log_section_size = PAGE_SIZE


def check(ok: bool, contender: str) -> None:
    if not ok:
        raise RuntimeError(f"{contender} read back something else than was written")


def pages(
    fetch: Callable[[int, int], Sequence[Any]], size: int = PAGE_SIZE, after: int = 0
) -> Iterator[Sequence[Any]]:
    """Keyset paging over the global log: ``fetch(after, size)`` returns rows whose
    first column is the position; yields each non-empty page, stops after a short one."""
    while True:
        rows = fetch(after, size)
        if rows:
            yield rows
        if len(rows) < size:
            return
        after = rows[-1][0]


# -- eventsourcing on SQLite with the same PRAGMA synchronous as the others ----------------


class _SynchronousPool(SQLiteConnectionPool):
    """eventsourcing's pool, plus ``PRAGMA synchronous`` on each new connection."""

    def __init__(self, *, synchronous: str, **kwargs: Any) -> None:
        self.synchronous = synchronous
        super().__init__(**kwargs)

    def _create_connection(self) -> SQLiteConnection:
        conn = super()._create_connection()
        conn._sqlite_conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return conn


class SynchronousSQLiteFactory(SQLiteFactory):
    """eventsourcing.sqlite with env ``SQLITE_SYNCHRONOUS`` (it otherwise keeps
    SQLite's default, FULL). Selected by PERSISTENCE_MODULE=<this module>:<this class>."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        synchronous = self.env.get("SQLITE_SYNCHRONOUS")
        if synchronous:
            old = self.datastore.pool
            self.datastore.pool = _SynchronousPool(
                synchronous=synchronous, db_name=old.db_name, lock_timeout=old.lock_timeout
            )
            old.close()


def es_sqlite_env(path: Path, durability: str, *, snapshotting: bool = False) -> dict[str, str]:
    """eventsourcing's settings for a SQLite file, with the suites' PRAGMA synchronous."""
    return {
        "PERSISTENCE_MODULE": f"{__name__}:SynchronousSQLiteFactory",
        "SQLITE_DBNAME": str(path),
        "SQLITE_SYNCHRONOUS": SYNCHRONOUS[durability],
        # Explicit either way, so an IS_SNAPSHOTTING_ENABLED in os.environ changes nothing.
        "IS_SNAPSHOTTING_ENABLED": "y" if snapshotting else "n",
    }


# -- command line ---------------------------------------------------------------------------


def add_common_arguments(
    parser: argparse.ArgumentParser, quick_help: str = "small counts (a smoke run)"
) -> None:
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")


def finish(
    args: argparse.Namespace,
    info: dict[str, Any],
    started: float,
    records: list[dict[str, Any]],
) -> int:
    """The end of a run: total time, and the JSON file if ``--json`` asked for one."""
    elapsed = time.perf_counter() - started
    print(f"\ntotal {elapsed:.1f} s; ratios > 1 mean eventfold has the higher throughput")
    if args.json:
        write_json(
            args.json, {"system": info, "elapsed_s": round(elapsed, 2), "scenarios": records}
        )
        print(f"wrote {args.json}")
    return 0


def suite_main(
    suite: str,
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    argv: list[str] | None = None,
) -> int:
    """``python -m benchmarks.<suite>_bench``: the suite's options, then its run."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks {suite}", description=doc)
    add_arguments(parser)
    return run(parser.parse_args(argv))
