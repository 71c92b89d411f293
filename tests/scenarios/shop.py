"""The application the scenarios run: orders with lines, a SQL read model of
order totals, and a worker process that runs it as a service would.

Run as a process (``python -m tests.scenarios.shop worker KIND WHERE SCHEMA``)
it runs the read model with ``run_forever`` and stops cleanly on SIGTERM.
``SHOP_SLOW_MS`` makes each event take that long (a workload, so that a
backlog lasts long enough for a signal to arrive during it).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

import msgspec

from eventfold import SqliteEventStore
from eventfold.events import RecordedEvent
from eventfold.projections import Projection, ProjectionContext, ProjectionRunner
from eventfold.serialization import Serializer, TypeRegistry, default_registry
from eventfold.store import EventStore
from eventfold.store.postgres import PostgresEventStore


class OrderLineAdded(msgspec.Struct, frozen=True):
    """Release 2's line: release 1 stored it as ``shop.ItemAdded`` with ``price_cents``."""

    sku: str
    quantity: int
    price: str


class ItemAdded(msgspec.Struct, frozen=True):
    """Release 1's line."""

    sku: str
    price_cents: int


def release_1() -> Serializer:
    registry = TypeRegistry()
    registry.register(ItemAdded, name="shop.ItemAdded")
    return Serializer(registry)


def release_2() -> Serializer:
    """The rename with an upcaster: old lines read as OrderLineAdded (quantity 1)."""
    registry = TypeRegistry()
    _register_release_2(registry)
    return Serializer(registry)


def _register_release_2(registry: TypeRegistry) -> None:
    registry.register(OrderLineAdded, name="shop.OrderLineAdded", version=2)
    registry.alias("shop.ItemAdded", "shop.OrderLineAdded")

    @registry.upcaster("shop.ItemAdded", 1)
    def cents_to_price(payload: dict[str, Any]) -> dict[str, Any]:
        cents = payload.pop("price_cents")
        return {**payload, "quantity": 1, "price": f"{cents // 100}.{cents % 100:02d}"}


# The release this module ships: what a process that imports it (the CLI) reads with.
_register_release_2(default_registry)


def line(sku: str, quantity: int, price: str) -> OrderLineAdded:
    return OrderLineAdded(sku, quantity, price)


def table_name(table: str) -> str:
    """``table`` in the schema named by ``SHOP_SCHEMA`` (PostgreSQL), else unqualified."""
    schema = os.environ.get("SHOP_SCHEMA")
    return f"{schema}.{table}" if schema else table


def totals_projection(name: str = "shop-totals", base: str = "order_totals") -> Projection:
    """Order totals in cents, a SQL table in the store's database (and schema)."""
    slow = float(os.environ.get("SHOP_SLOW_MS", "0")) / 1000

    def setup(ctx: ProjectionContext) -> None:
        table = table_name(base)
        ctx.execute(
            f"CREATE TABLE IF NOT EXISTS {table} "
            "(orders TEXT PRIMARY KEY, lines BIGINT NOT NULL, cents BIGINT NOT NULL)"
        )

    def teardown(ctx: ProjectionContext) -> None:
        ctx.execute(f"DROP TABLE IF EXISTS {table_name(base)}")

    def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
        if slow:
            time.sleep(slow)  # the workload of a real handler
        data, table = event.data, table_name(base)
        whole, _, fraction = data.price.partition(".")
        cents = (int(whole) * 100 + int(fraction or 0)) * data.quantity
        ctx.execute(
            f"INSERT INTO {table} AS t (orders, lines, cents) VALUES (?, 1, ?) "
            "ON CONFLICT (orders) "
            "DO UPDATE SET lines = t.lines + 1, cents = t.cents + excluded.cents",
            (event.stream, cents),
        )

    return Projection(name, handle, types=["shop.OrderLineAdded"], setup=setup, teardown=teardown)


#: What the CLI loads (module:attribute): the live version and its blue/green successor.
totals = totals_projection()
totals_v2 = totals_projection("shop-totals-v2", "order_totals_v2")


def open_store(kind: str, where: str, schema: str) -> EventStore:
    if kind == "sqlite":
        return SqliteEventStore(where, durability="normal", serializer=release_2())
    return PostgresEventStore(where, schema=schema, max_size=3, serializer=release_2())


def worker(kind: str, where: str, schema: str, owner: str, lease: float) -> None:
    """Run the read model until SIGTERM, the way a service's worker does."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    with open_store(kind, where, schema) as store:
        runner = ProjectionRunner(
            store, totals, owner=owner, lease_seconds=lease, poll_interval=0.05
        )
        print("started", flush=True)
        runner.run_forever(stop)
    print("stopped", flush=True)


if __name__ == "__main__":  # pragma: no cover - run as a subprocess by the scenarios
    _, command, kind, where, schema, owner, lease = sys.argv
    if command == "worker":
        worker(kind, where, schema, owner, float(lease))
