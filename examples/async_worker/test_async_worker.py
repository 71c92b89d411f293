"""The asyncio worker's model and saga, in one event loop: the quick tour.

The worker process itself (SIGTERM, kill -9, a restart, PostgreSQL) is run by
``tests/scenarios/test_async_service.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from eventfold import AsyncCommandHandler, AsyncSqliteEventStore
from eventfold.projections import AsyncProjectionRunner
from examples.async_worker import service

pytestmark = pytest.mark.asyncio


async def test_orders_are_reserved_confirmed_or_rejected_and_the_view_follows(
    tmp_path: Path,
) -> None:
    async with AsyncSqliteEventStore(tmp_path / "orders.db") as store:
        saga = service.reservations(store).runner(store, poll_interval=0.05)
        view = AsyncProjectionRunner(store, service.order_view(), poll_interval=0.05)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(saga.run_forever(stop))
            tasks.create_task(view.run_forever(stop))
            stock = AsyncCommandHandler(store, service.stock)
            orders = AsyncCommandHandler(store, service.orders)
            await stock.handle("stock-fig", service.AddStock(3))
            for n in (1, 2):
                await orders.handle(f"order-{n}", service.Place("fig", 2))
            # The saga appends (a reservation, then a confirmation or a rejection):
            # wait until both runners have passed the log's end and it grows no more.
            while True:
                last = await store.last_position()
                await store.wait_for("reservations", last, timeout=30)
                await store.wait_for("order-view", last, timeout=30)
                if await store.last_position() == last:
                    break
            stop.set()
        statuses = [type(e.data).__name__ async for e in store.read("order-2")]
        assert statuses == ["OrderPlaced", "OrderRejected"]
        async with store.transaction() as tx:
            rows = (await tx.execute("SELECT id, status FROM order_view ORDER BY id")).fetchall()
            reserved = (await tx.execute("SELECT sku, quantity FROM reserved")).fetchall()
        assert rows == [("order-1", "confirmed"), ("order-2", "rejected")]
        assert reserved == [("fig", 2)]
