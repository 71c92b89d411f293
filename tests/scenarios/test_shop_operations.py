"""The shop across releases and operations, on SQLite and PostgreSQL, with real processes.

* a release renames a type (alias + upcaster), then the read model is rebuilt;
* SIGTERM arrives while the worker is in the middle of a backlog;
* an operator runs the CLI while the application's worker is live;
* the active worker is killed with SIGKILL and the hot standby takes over.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from eventfold.projections import ProjectionRunner
from eventfold.store import EventStore
from eventfold.store.postgres import migrate
from tests.scenarios import shop
from tests.support.pg import new_schema_name

BOUND = 60.0
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Site:
    """Where the shop's store lives, for this process, workers and the CLI."""

    kind: str
    where: str
    schema: str

    def open(self, serializer: Any = None) -> EventStore:
        store = shop.open_store(self.kind, self.where, self.schema)
        if serializer is not None:
            store.serializer = serializer
        return store

    def cli_store(self) -> list[str]:
        if self.kind == "sqlite":
            return ["--db", self.where]
        return ["--postgres", self.where, "--schema", self.schema]

    def table(self, store: EventStore, table: str = "order_totals") -> dict[str, tuple[int, int]]:
        query = f"SELECT orders, lines, cents FROM {shop.table_name(table)}"
        if self.kind == "sqlite":
            import sqlite3  # noqa: PLC0415

            with sqlite3.connect(self.where) as conn:
                rows = conn.execute(query).fetchall()
        else:
            with store.pool.connection() as conn:  # type: ignore[attr-defined]
                rows = conn.execute(query).fetchall()
        return {orders: (lines, cents) for orders, lines, cents in rows}


@pytest.fixture(params=["sqlite", "postgres"])
def site(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    if request.param == "sqlite":
        monkeypatch.delenv("SHOP_SCHEMA", raising=False)
        return Site("sqlite", str(tmp_path / "shop.db"), "")
    url = request.getfixturevalue("pg_database")
    schema = new_schema_name()
    migrate(url, schema=schema)
    # The read model's tables live in the store's schema (workers and the CLI inherit it).
    monkeypatch.setenv("SHOP_SCHEMA", schema)
    return Site("postgres", url, schema)


def expected_totals(store: EventStore) -> dict[str, tuple[int, int]]:
    """The totals computed from the log itself (what the read model must hold)."""
    result: dict[str, tuple[int, int]] = {}
    for event in store.read_all(types=["shop.OrderLineAdded"]):
        lines, cents = result.get(event.stream, (0, 0))
        whole, _, fraction = event.data.price.partition(".")
        add = (int(whole) * 100 + int(fraction)) * event.data.quantity
        result[event.stream] = (lines + 1, cents + add)
    return result


def fill(store: EventStore, orders: int, lines: int) -> None:
    for n in range(lines):
        for o in range(orders):
            store.append(f"order-{o}", [shop.line(f"sku-{n}", 1 + n % 2, "2.50")])


def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (a synchronisation point) until true, or fail naming ``what``."""
    deadline = time.monotonic() + BOUND
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


class Worker:
    """The application's worker process (tests/scenarios/shop.py)."""

    def __init__(self, site: Site, owner: str, lease: float = 2.0, slow_ms: int = 0) -> None:
        env = {**os.environ, "SHOP_SLOW_MS": str(slow_ms), "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.scenarios.shop", "worker", site.kind, site.where,
             site.schema or "eventfold", owner, str(lease)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "started"

    def terminate(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=BOUND)
        return self.process.returncode, out + err

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=BOUND)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        if worker.process.poll() is None:
            worker.kill()


def cli(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventfold.cli", *args, *site.cli_store()],
        capture_output=True, text=True, timeout=BOUND, check=False, cwd=ROOT,
        env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def test_a_renamed_type_survives_a_rebuild_of_the_read_model(site: Site) -> None:
    with site.open(shop.release_1()) as store:  # release 1 writes the old events
        store.append("order-1", [shop.ItemAdded("a", 1900), shop.ItemAdded("b", 5000)])
    with site.open() as store:  # release 2: renamed, with an upcaster
        store.append("order-1", [shop.line("c", 1, "99.00")])
        runner = ProjectionRunner(store, shop.totals)
        runner.rebuild()
        assert site.table(store) == {"order-1": (3, 16800)}  # 3 lines, 168.00
        assert expected_totals(store) == site.table(store)


def test_sigterm_during_a_backlog_stops_within_one_batch(site: Site, workers: list[Worker]) -> None:
    with site.open() as store:
        fill(store, orders=10, lines=100)  # 1,000 lines waiting
        worker = Worker(site, "shop-worker-1", slow_ms=2)
        workers.append(worker)
        probe = ProjectionRunner(store, shop.totals, owner="probe")
        until(lambda: probe.status().position > 0, "the worker to start on the backlog")
        signalled = time.monotonic()
        code, output = worker.terminate()
        took = time.monotonic() - signalled
        assert code == 0, output
        assert "stopped" in output
        handled = sum(lines for lines, _ in site.table(store).values())
        assert 0 < handled < 1_000, "SIGTERM arrived during the backlog"
        status = probe.status()
        assert status.lag_events == 1_000 - handled  # the checkpoint is at the read model
        assert not status.running  # the lease was released on the way out
        print(f"{site.kind}: exited {took:.3f} s after SIGTERM with {handled} of 1000 handled")
        probe.run_once()  # the next deploy goes on from there: nothing lost or doubled
        assert site.table(store) == expected_totals(store)


def test_an_operator_works_beside_the_live_worker(site: Site, workers: list[Worker]) -> None:
    with site.open() as store:
        fill(store, orders=3, lines=10)
        workers.append(Worker(site, "shop-host:1"))
        probe = ProjectionRunner(store, shop.totals, owner="probe")
        until(lambda: probe.status().lag_events == 0, "the worker to catch up")
        # A rebuild from the CLI must not pull the read model from under the worker.
        refused = cli(site, "projections", "run", "tests.scenarios.shop:totals", "--rebuild")
        assert refused.returncode == 1
        assert "shop-host:1" in refused.stderr and "switch" in refused.stderr
        # The no-downtime path: build v2 beside it, then switch readers.
        built = cli(site, "projections", "run", "tests.scenarios.shop:totals_v2")
        assert built.returncode == 0, built.stderr
        switched = cli(site, "projections", "switch", "totals", "shop-totals-v2")
        assert switched.returncode == 0, switched.stderr
        status = cli(site, "projections", "status")
        assert "shop-totals-v2" in status.stdout and "yes" in status.stdout
        # The live worker never noticed: it follows new orders. This process reads
        # its write through the worker's read model (wait_for, across processes).
        late = store.append("order-0", [shop.line("late", 1, "1.00")])
        assert store.wait_for(shop.totals.name, late.position, timeout=BOUND) >= late.position
        assert site.table(store) == expected_totals(store)
        v2 = site.table(store, "order_totals_v2")
        assert v2 == {**expected_totals(store), "order-0": v2["order-0"]}


def test_kill_9_of_the_active_worker_and_the_standby_takes_over(
    site: Site, workers: list[Worker]
) -> None:
    with site.open() as store:
        fill(store, orders=4, lines=20)
        active = Worker(site, "host-a", lease=1.0)
        workers.append(active)
        probe = ProjectionRunner(store, shop.totals, owner="probe")
        until(lambda: probe.status().lag_events == 0, "the active worker to catch up")
        standby = Worker(site, "host-b", lease=1.0)
        workers.append(standby)
        fill(store, orders=4, lines=5)
        until(lambda: probe.status().lag_events == 0, "the active worker to follow")
        active.kill()  # SIGKILL: no cleanup, the lease simply stops being renewed
        fill(store, orders=4, lines=10)
        until(lambda: probe.status().lag_events == 0, "the standby to take over")
        assert site.table(store) == expected_totals(store)  # nothing lost or doubled
        code, output = standby.terminate()
        assert code == 0, output
