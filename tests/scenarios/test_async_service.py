"""An asyncio order service across its life, on SQLite and PostgreSQL, with real processes.

The service (``examples/async_worker/service.py``) runs a saga and a SQL read
model as two ``run_forever`` tasks of one event loop, in its own process;
this test is the web tier: it places orders with async command handlers and
reads its writes with ``store.wait_for`` from another process than the
runners'.

* orders flow through the saga (reserved and confirmed, or rejected when
  the stock is short) and the view shows each once the write's wait returns;
* an operator's reset while the service is live is refused, naming the
  service's runner; after the service stops it goes through;
* SIGTERM arrives during a backlog: the service exits within the batch in
  hand, its checkpoints exactly what the view shows;
* the service is killed with SIGKILL mid-backlog and restarted: no order is
  lost or reserved twice, and the view equals a rebuild.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from eventfold import AsyncCommandHandler, LeaseHeld
from eventfold.projections import AsyncProjectionRunner
from eventfold.store import AsyncEventStore
from eventfold.store.postgres import async_migrate
from eventfold.testing._support import async_fetchall
from examples.async_worker import service as app
from tests.support.pg import new_schema_name

pytestmark = pytest.mark.asyncio

BOUND = 60.0
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Site:
    kind: str
    where: str
    schema: str

    def open(self) -> AsyncEventStore:
        return app.open_store(self.kind, self.where, self.schema)

    def start(self, owner: str, slow_ms: int = 0) -> subprocess.Popen[str]:
        env = {**os.environ, "ORDERS_SLOW_MS": str(slow_ms)}
        command = [sys.executable, "-m", "examples.async_worker.service"]
        service = subprocess.Popen(
            [*command, self.kind, self.where, self.schema, owner],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert service.stdout is not None and service.stdout.readline() == "started\n"
        return service


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def site(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Site]:
    if request.param == "sqlite":
        yield Site("sqlite", str(tmp_path / "orders.db"), "")
        return
    url = request.getfixturevalue("pg_database")
    schema = new_schema_name()
    await async_migrate(url, schema=schema)
    # The read model's tables live in the test's own schema.
    yield Site("postgres", f"{url} options='-c search_path={schema}'", schema)


async def view(store: AsyncEventStore) -> tuple[dict[str, str], dict[str, int]]:
    """The read model's tables: order statuses, reserved quantities."""
    async with store.transaction() as tx:
        result = []
        for query in ("SELECT id, status FROM order_view", "SELECT sku, quantity FROM reserved"):
            rows = await async_fetchall(await tx.execute(query))
            result.append({row[0]: row[1] for row in rows})
    return result[0], {sku: int(n) for sku, n in result[1].items()}


async def folded(
    store: AsyncEventStore, upto: int | None = None
) -> tuple[dict[str, str], dict[str, int]]:
    """The same tables folded from the log (up to position ``upto``)."""
    statuses: dict[str, str] = {}
    reserved: dict[str, int] = {}
    async for event in store.read_all():
        if upto is not None and event.position > upto:
            break
        data = event.data
        if isinstance(data, app.StockReserved):
            sku = event.stream.removeprefix("stock-")
            reserved[sku] = reserved.get(sku, 0) + data.quantity
        elif isinstance(data, app.OrderPlaced):
            statuses[event.stream] = "placed"
        elif isinstance(data, app.OrderConfirmed):
            statuses[event.stream] = "confirmed"
        elif isinstance(data, app.OrderRejected):
            statuses[event.stream] = "rejected"
    return statuses, reserved


async def settled(store: AsyncEventStore) -> int:
    """Wait until the saga and the view have passed the end of the log, which the saga
    itself extends (a reservation, then a confirmation): until a pass adds nothing."""
    while True:
        last = await store.last_position()
        await store.wait_for("reservations", last, timeout=BOUND)
        await store.wait_for("order-view", last, timeout=BOUND)
        if await store.last_position() == last:
            return last


def stop(service: subprocess.Popen[str], how: int = signal.SIGTERM) -> int:
    service.send_signal(how)
    return service.wait(BOUND)


async def test_orders_flow_through_the_saga_and_the_view_reads_its_writes(site: Site) -> None:
    async with site.open() as store:
        service = site.start("service-1")
        try:
            stock = AsyncCommandHandler(store, app.stock)
            orders = AsyncCommandHandler(store, app.orders)
            await stock.handle("stock-apple", app.AddStock(5))
            for n in range(1, 4):
                placed = await orders.handle(f"order-{n}", app.Place("apple", 2))
                # Read your write from this process: the view has the order.
                await store.wait_for("order-view", placed.position, timeout=BOUND)
                assert (await view(store))[0][f"order-{n}"] in ("placed", "confirmed", "rejected")
            await settled(store)
            statuses, reserved = await view(store)
            assert statuses == {
                "order-1": "confirmed",
                "order-2": "confirmed",
                "order-3": "rejected",  # 1 apple left: the saga's compensation
            }
            assert reserved == {"apple": 4}
            # An operator's reset while the service is live is refused, naming it.
            operator = AsyncProjectionRunner(store, app.order_view(), owner="operator")
            with pytest.raises(LeaseHeld) as held:
                await operator.reset(wait=0.2)
            assert held.value.owner == "service-1"
        finally:
            assert stop(service) == 0
        # Stopped: its leases are released, and the operator's rebuild goes through.
        assert await operator.rebuild() > 0
        assert await view(store) == await folded(store)


async def test_sigterm_in_a_backlog_then_kill_9_and_a_restart_lose_and_double_nothing(
    site: Site,
) -> None:
    async with site.open() as store:
        stock = AsyncCommandHandler(store, app.stock)
        orders = AsyncCommandHandler(store, app.orders)
        await stock.handle("stock-pear", app.AddStock(10_000))
        for n in range(150):
            await orders.handle(f"order-{n}", app.Place("pear", 1))
        backlog = [e.position async for e in store.read_all()]

        # SIGTERM during the backlog: the service ends within the batch in hand.
        service = site.start("service-1", slow_ms=5)
        await store.wait_for("order-view", backlog[len(backlog) // 4], timeout=BOUND)
        assert stop(service) == 0
        checkpoint = await AsyncProjectionRunner(store, app.order_view()).get_position()
        assert checkpoint < await store.last_position()  # stopped midway through the backlog
        assert await view(store) == await folded(store, upto=checkpoint)

        # SIGKILL mid-backlog (no cleanup, leases held), then a restart with the
        # same identity: it resumes where the dead one's commits ended.
        service = site.start("service-1", slow_ms=5)
        log = [e.position async for e in store.read_all()]
        await store.wait_for("order-view", log[log.index(checkpoint) + 20], timeout=BOUND)
        assert stop(service, signal.SIGKILL) == -signal.SIGKILL
        service = site.start("service-1")
        try:
            await settled(store)
        finally:
            assert stop(service) == 0

        statuses, reserved = await view(store)
        assert statuses == {f"order-{n}": "confirmed" for n in range(150)}
        assert reserved == {"pear": 150}  # each order reserved once, redeliveries included
        assert (statuses, reserved) == await folded(store)
        for n in (0, 75, 149):
            events = [type(e.data) async for e in store.read(f"order-{n}")]
            assert events == [app.OrderPlaced, app.OrderConfirmed]
