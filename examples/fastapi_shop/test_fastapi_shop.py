"""The FastAPI shop end to end over HTTP: uvicorn serves it on a loopback port (its
lifespan runs the saga and the read model in the background, as in production) and
httpx is the client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from eventfold import AsyncSqliteEventStore
from eventfold.store.postgres import AsyncPostgresEventStore, migrate
from examples.fastapi_shop.app import create_app
from tests.support.pg import (  # noqa: F401 - pg_database: a fixture, used by name
    free_loopback_port,
    new_schema_name,
    pg_database,
)

GUARD = 30.0


@pytest.fixture(params=["sqlite", "postgres"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[httpx.Client]:
    if request.param == "sqlite":
        path = tmp_path / "shop.db"
        app = create_app(lambda: AsyncSqliteEventStore(path, durability="normal"))
    else:
        url = request.getfixturevalue("pg_database")
        schema = new_schema_name()
        migrate(url, schema=schema)
        # The read model's tables in the store's schema: first on the search path.
        conninfo = f"{url} options=-csearch_path={schema}"
        app = create_app(lambda: AsyncPostgresEventStore(conninfo, schema=schema, max_size=4))
    port = free_loopback_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + GUARD
    while not server.started:  # the lifespan has run: the store is open, the runners run
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=GUARD) as opened:
            yield opened
    finally:
        server.should_exit = True  # the lifespan's end stops the runners, closes the store
        thread.join(GUARD)
        assert not thread.is_alive(), "uvicorn did not shut down"


def status_becomes(client: httpx.Client, order: str, wanted: str) -> None:
    """Poll the read model (the saga works in the background) until ``order`` is ``wanted``."""
    deadline = time.monotonic() + 30
    while (seen := client.get(f"/orders/{order}").json().get("status")) != wanted:
        assert time.monotonic() < deadline, f"{order} stayed {seen!r}, never {wanted!r}"
        time.sleep(0.01)


def read_own_write(client: httpx.Client, order: str, position: str) -> dict[str, str]:
    response = client.get(f"/orders/{order}", headers={"Eventfold-Position": position})
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    return body


def test_an_order_is_placed_reserved_and_confirmed_and_read_back(client: httpx.Client) -> None:
    stocked = client.put("/stock/fig", json={"quantity": 3})
    assert stocked.status_code == 200, stocked.text
    assert stocked.headers["ETag"] == '"1"' and stocked.json()["available"] == 3
    placed = client.put("/orders/o-1", json={"sku": "fig", "quantity": 2})
    assert placed.status_code == 201, placed.text
    position = placed.headers["Eventfold-Position"]
    assert placed.json()["position"] == position and position.isdigit()  # a string, for JS
    # Read your write: the read model has the order once it passed the position.
    assert read_own_write(client, "o-1", position)["status"] in ("placed", "confirmed")
    status_becomes(client, "o-1", "confirmed")  # the saga reserved the stock
    health = client.get("/health")
    assert health.status_code == 200, health.text
    assert set(health.json()["runners"]) == {"order-view", "reservations"}


def test_a_retried_request_is_answered_from_the_log_not_placed_twice(client: httpx.Client) -> None:
    client.put("/stock/fig", json={"quantity": 5})
    key = {"Idempotency-Key": "checkout-42"}
    first = client.put("/orders/o-2", json={"sku": "fig", "quantity": 1}, headers=key)
    again = client.put("/orders/o-2", json={"sku": "fig", "quantity": 1}, headers=key)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["replayed"] is True
    assert again.headers["Eventfold-Position"] == first.headers["Eventfold-Position"]
    # The same key for another command is refused: 422, nothing written.
    other = client.put("/orders/o-2", json={"sku": "fig", "quantity": 4}, headers=key)
    assert other.status_code == 422, other.text
    assert other.json()["error"] == "IdempotencyKeyReused"


def test_if_match_and_if_none_match_are_expected_versions(client: httpx.Client) -> None:
    new = {"If-None-Match": "*"}
    created = client.put("/stock/plum", json={"quantity": 1}, headers=new)
    assert created.status_code == 200 and created.headers["ETag"] == '"1"'
    again = client.put("/stock/plum", json={"quantity": 1}, headers=new)
    assert again.status_code == 409, again.text  # exists already
    assert again.json()["actual_version"] == 1 and again.headers["ETag"] == '"1"'
    ok = client.put("/stock/plum", json={"quantity": 2}, headers={"If-Match": '"1"'})
    assert ok.status_code == 200 and ok.headers["ETag"] == '"2"'
    stale = client.put("/stock/plum", json={"quantity": 2}, headers={"If-Match": '"1"'})
    assert stale.status_code == 409 and stale.json()["actual_version"] == 2
    bad = client.put("/stock/plum", json={"quantity": 2}, headers={"If-Match": "yesterday"})
    assert bad.status_code == 422


def test_a_rejected_order_and_the_statuses_of_errors(client: httpx.Client) -> None:
    client.put("/stock/kiwi", json={"quantity": 1})
    placed = client.put("/orders/o-3", json={"sku": "kiwi", "quantity": 5})
    assert placed.status_code == 201
    # The saga's reservation is refused (out of stock): it rejects the order.
    status_becomes(client, "o-3", "rejected")
    missing = client.get("/orders/nothing")
    assert missing.status_code == 404
    invalid = client.put("/orders/o-4", json={"sku": "kiwi", "quantity": 0})
    assert invalid.status_code == 422  # FastAPI's validation, before eventfold
    position = client.get("/orders/o-3", headers={"Eventfold-Position": "not a position"})
    assert position.status_code == 422
