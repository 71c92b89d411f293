"""An asyncio worker: a read model and a saga as tasks of one event loop (no web framework).

Orders reserve stock through a saga (an async process manager dispatching
to async command handlers): an order placed reserves its quantity on the
stock stream, then is confirmed, or rejected when the stock is short (a
compensation). An async SQL read model keeps each order's status and each
sku's reserved quantity in the store's database.

Run it as a process::

    python -m examples.async_worker.service sqlite orders.db "" worker-1
    python -m examples.async_worker.service postgres "dbname=app" app worker-1

It runs both with ``run_forever`` as two tasks of a TaskGroup and stops
cleanly on SIGTERM (within the batch in hand): the shape of any asyncio
service's background work (a FastAPI lifespan runs the same two tasks).
``ORDERS_SLOW_MS`` makes each read model event take that long (a workload:
a backlog then lasts long enough for a signal to arrive during it).
``tests/scenarios/test_async_service.py`` runs it across its life, and
``test_async_worker.py`` beside it is the quick tour.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass

from eventfold import AsyncCommandHandler, AsyncSqliteEventStore, Decider, Event, RecordedEvent
from eventfold.processes import AsyncDispatch, AsyncProcessManager
from eventfold.projections import AsyncProjectionRunner, Projection, ProjectionContext
from eventfold.store import AsyncEventStore
from eventfold.store.postgres import AsyncPostgresEventStore

# -- the model ---------------------------------------------------------------------------


class StockAdded(Event, frozen=True):
    __event_type__ = "async_orders.StockAdded"
    quantity: int


class StockReserved(Event, frozen=True):
    __event_type__ = "async_orders.StockReserved"
    order: str
    quantity: int


class OrderPlaced(Event, frozen=True):
    __event_type__ = "async_orders.OrderPlaced"
    sku: str
    quantity: int


class OrderConfirmed(Event, frozen=True):
    __event_type__ = "async_orders.OrderConfirmed"


class OrderRejected(Event, frozen=True):
    __event_type__ = "async_orders.OrderRejected"
    reason: str


class OutOfStock(Exception):
    """A reservation for more than the stock left."""


@dataclass(frozen=True)
class AddStock:
    quantity: int


@dataclass(frozen=True)
class Reserve:
    order: str
    quantity: int


def decide_stock(command: AddStock | Reserve, available: int) -> list[Event]:
    if isinstance(command, AddStock):
        return [StockAdded(quantity=command.quantity)]
    if command.quantity > available:
        raise OutOfStock(f"{command.quantity} wanted, {available} left")
    return [StockReserved(order=command.order, quantity=command.quantity)]


def evolve_stock(available: int, event: object) -> int:
    if isinstance(event, StockAdded):
        return available + event.quantity
    if isinstance(event, StockReserved):
        return available - event.quantity
    return available


@dataclass(frozen=True)
class Place:
    sku: str
    quantity: int


@dataclass(frozen=True)
class Confirm:
    pass


@dataclass(frozen=True)
class Reject:
    reason: str


def decide_order(command: Place | Confirm | Reject, status: str) -> list[Event]:
    if isinstance(command, Place):
        return [] if status else [OrderPlaced(sku=command.sku, quantity=command.quantity)]
    if status != "placed":
        return []  # decided already: a redelivered reaction changes nothing
    if isinstance(command, Confirm):
        return [OrderConfirmed()]
    return [OrderRejected(reason=command.reason)]


def evolve_order(status: str, event: object) -> str:
    if isinstance(event, OrderPlaced):
        return "placed"
    if isinstance(event, OrderConfirmed):
        return "confirmed"
    if isinstance(event, OrderRejected):
        return "rejected"
    return status


stock: Decider[int, AddStock | Reserve, Event] = Decider(decide_stock, evolve_stock, int)
orders: Decider[str, Place | Confirm | Reject, Event] = Decider(decide_order, evolve_order, str)

# -- the saga and the read model -----------------------------------------------------------


def reservations(store: AsyncEventStore) -> AsyncProcessManager:
    stock_handler = AsyncCommandHandler(store, stock)
    order_handler = AsyncCommandHandler(store, orders)

    async def react(event: RecordedEvent) -> list[AsyncDispatch]:
        data = event.data
        if isinstance(data, OrderPlaced):
            reserve = Reserve(event.stream, data.quantity)
            return [AsyncDispatch(stock_handler, f"stock-{data.sku}", reserve)]
        if isinstance(data, StockReserved):
            return [AsyncDispatch(order_handler, data.order, Confirm())]
        return []

    def on_rejected(
        event: RecordedEvent, dispatch: AsyncDispatch, error: Exception
    ) -> list[AsyncDispatch]:
        return [AsyncDispatch(order_handler, event.stream, Reject(str(error)))]

    return AsyncProcessManager(
        "reservations",
        react,
        types=["async_orders.OrderPlaced", "async_orders.StockReserved"],
        on_rejected=on_rejected,
        rejections=(OutOfStock,),
    )


def order_view() -> Projection:
    """Each order's status and each sku's reserved quantity: SQL in the store's database."""
    slow = float(os.environ.get("ORDERS_SLOW_MS", "0")) / 1000

    async def setup(ctx: ProjectionContext) -> None:
        await ctx.execute(
            "CREATE TABLE IF NOT EXISTS order_view (id TEXT PRIMARY KEY, status TEXT NOT NULL)"
        )
        await ctx.execute(
            "CREATE TABLE IF NOT EXISTS reserved (sku TEXT PRIMARY KEY, quantity BIGINT NOT NULL)"
        )

    async def teardown(ctx: ProjectionContext) -> None:
        await ctx.execute("DROP TABLE IF EXISTS order_view")
        await ctx.execute("DROP TABLE IF EXISTS reserved")

    async def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
        if slow:
            await asyncio.sleep(slow)  # the workload of a real handler
        data = event.data
        if isinstance(data, StockReserved):
            await ctx.execute(
                "INSERT INTO reserved AS r (sku, quantity) VALUES (?, ?) ON CONFLICT (sku) "
                "DO UPDATE SET quantity = r.quantity + excluded.quantity",
                (event.stream.removeprefix("stock-"), data.quantity),
            )
            return
        status = {OrderPlaced: "placed", OrderConfirmed: "confirmed"}.get(type(data), "rejected")
        await ctx.execute(
            "INSERT INTO order_view (id, status) VALUES (?, ?) "
            "ON CONFLICT (id) DO UPDATE SET status = excluded.status",
            (event.stream, status),
        )

    types = [
        "async_orders.OrderPlaced",
        "async_orders.OrderConfirmed",
        "async_orders.OrderRejected",
        "async_orders.StockReserved",
    ]
    return Projection("order-view", handle, types=types, setup=setup, teardown=teardown)


def open_store(kind: str, where: str, schema: str) -> AsyncEventStore:
    if kind == "sqlite":
        return AsyncSqliteEventStore(where, durability="normal", busy_timeout=30)
    return AsyncPostgresEventStore(where, schema=schema, max_size=4)


async def serve(kind: str, where: str, schema: str, owner: str) -> None:
    """The service's background work until SIGTERM: the saga and the read model."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with open_store(kind, where, schema) as store:
        options = {"owner": owner, "poll_interval": 0.05, "lease_seconds": 5.0}
        saga = reservations(store).runner(store, **options)
        view = AsyncProjectionRunner(store, order_view(), **options)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(saga.run_forever(stop))
            tasks.create_task(view.run_forever(stop))
            print("started", flush=True)
    print("stopped", flush=True)


if __name__ == "__main__":  # pragma: no cover - run as a subprocess by the scenarios
    _, kind, where, schema, owner = sys.argv
    asyncio.run(serve(kind, where, schema, owner))
