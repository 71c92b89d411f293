"""Scenario: a service moves its events from dataclasses to pydantic models across releases.

Release 1 stores ``ship.Shipped`` as a dataclass. Release 2 declares it as a
pydantic model with a new field (schema version 2, an upcaster for what
release 1 wrote), takes pydantic commands from its HTTP layer with
idempotency keys, and rebuilds its SQL read model from the whole log, on
SQLite and on PostgreSQL. A retried request after a restart is answered from
the log; a reading that would not read back is refused and nothing is lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from eventfold import CommandHandler, Decider, InvalidEvent, RecordedEvent
from eventfold.projections import Projection, ProjectionContext, ProjectionRunner
from eventfold.serialization import Serializer, TypeRegistry
from eventfold.store import EventStore
from eventfold.store.postgres import PostgresEventStore, migrate
from eventfold.store.sqlite import SqliteEventStore
from tests.support.pg import new_schema_name


@dataclass(frozen=True)
class ShippedV1:  # release 1
    order: str
    kilos: float


class Shipped(BaseModel):  # release 2
    model_config = ConfigDict(frozen=True)
    __event_type__ = "ship.Shipped"
    __event_version__ = 2
    order: str
    kilos: float
    carrier: str


class Ship(BaseModel):  # release 2's command, as its HTTP layer parses it
    kilos: float
    carrier: str


def release_1() -> Serializer:
    registry = TypeRegistry()
    registry.register(ShippedV1, name="ship.Shipped", version=1)
    return Serializer(registry)


def release_2() -> Serializer:
    registry = TypeRegistry()
    registry.register(Shipped)

    @registry.upcaster("ship.Shipped", 1)
    def by_post(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "carrier": "post"}  # what release 1 always used

    return Serializer(registry)


def ship(command: Ship, shipped: int) -> list[Shipped]:
    return [Shipped(order="", kilos=command.kilos, carrier=command.carrier)]


shipments = Decider(ship, lambda count, event: count + 1, int)


def carriers_projection() -> Projection:
    def setup(ctx: ProjectionContext) -> None:
        ctx.execute(
            "CREATE TABLE IF NOT EXISTS ship_carriers "
            "(carrier TEXT PRIMARY KEY, parcels BIGINT NOT NULL, kilos DOUBLE PRECISION NOT NULL)"
        )

    def teardown(ctx: ProjectionContext) -> None:
        ctx.execute("DROP TABLE IF EXISTS ship_carriers")

    def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
        data: Shipped = event.data
        ctx.execute(
            "INSERT INTO ship_carriers AS c (carrier, parcels, kilos) VALUES (?, 1, ?) "
            "ON CONFLICT (carrier) DO UPDATE SET parcels = c.parcels + 1, "
            "kilos = c.kilos + excluded.kilos",
            (data.carrier, data.kilos),
        )

    return Projection(
        "ship-carriers", handle, types=["ship.Shipped"], setup=setup, teardown=teardown
    )


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "sqlite":
        path = tmp_path / "ship.db"

        def sqlite(serializer: Serializer) -> EventStore:
            return SqliteEventStore(path, serializer=serializer)

        yield sqlite
        return
    url = request.getfixturevalue("pg_database")
    schema = new_schema_name()
    migrate(url, schema=schema)

    def postgres(serializer: Serializer) -> EventStore:
        # The read model's table in the store's schema: first on the search path.
        return PostgresEventStore(
            f"{url} options=-csearch_path={schema}", schema=schema, serializer=serializer
        )

    yield postgres


def carriers(store: EventStore) -> dict[str, tuple[int, float]]:
    with store.transaction() as tx:
        cursor = tx.execute("SELECT carrier, parcels, kilos FROM ship_carriers")
        return {carrier: (int(n), float(kilos)) for carrier, n, kilos in cursor.fetchall()}


def test_a_dataclass_event_becomes_a_pydantic_model_and_the_read_model_is_rebuilt(
    open_store: Any,
) -> None:
    with open_store(release_1()) as store:
        store.append("shipments-a", [ShippedV1("o-1", 2.0), ShippedV1("o-2", 3.5)])
    with open_store(release_2()) as store:
        handler = CommandHandler(store, shipments)
        first = handler.handle("shipments-a", Ship(kilos=1.5, carrier="dhl"), idempotency_key="r1")
        handler.handle("shipments-b", Ship(kilos=4.0, carrier="dhl"))
        # A NaN from a sensor is refused, naming the field; nothing is written.
        with pytest.raises(InvalidEvent) as refused:
            handler.handle("shipments-b", Ship(kilos=float("nan"), carrier="dhl"))
        assert refused.value.field == "kilos"
        runner = ProjectionRunner(store, carriers_projection())
        assert runner.run_once() == 4
        runner.rebuild()  # from the whole log, both releases' events
        assert carriers(store) == {"post": (2, 5.5), "dhl": (2, 5.5)}
        events = list(store.read("shipments-a"))
        assert [type(e.data) for e in events] == [Shipped] * 3
        assert [e.schema_version for e in events] == [1, 1, 2]  # stored as written
    with open_store(release_2()) as store:  # a restart: the client retries its request
        again = CommandHandler(store, shipments).handle(
            "shipments-a", Ship(kilos=1.5, carrier="dhl"), idempotency_key="r1"
        )
        assert again.replayed and again.position == first.position
        assert store.get_stream("shipments-a").version == 3  # type: ignore[union-attr]
