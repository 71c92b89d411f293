"""eventfold.starlette: headers, errors as statuses, health, and the lifespan's runners."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from eventfold import AsyncMemoryEventStore, Decider, RecordedEvent
from eventfold.errors import (
    InvalidRequest,
    ProjectionBehind,
    StoreTimeout,
    StoreUnavailable,
    StreamNotFound,
    TransactionConflict,
    WrongExpectedVersion,
)
from eventfold.projections import Projection, ProjectionContext
from eventfold.starlette import Eventfold, etag, expected_version, idempotency_key
from eventfold.testing._events import Deposited


def request_with(**headers: str) -> Request:
    raw = [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw})


@pytest.mark.asyncio
async def test_if_match_and_if_none_match_become_expected_versions() -> None:
    assert expected_version(request_with()) is None
    assert expected_version(request_with(if_match='"3"')) == 3
    assert expected_version(request_with(if_match='W/"12"')) == 12
    assert expected_version(request_with(if_match="7")) == 7
    assert expected_version(request_with(if_none_match="*")) == 0
    assert etag(3) == '"3"'
    for bad in ("*", '"-1"', "three", '"3", "4"'):
        with pytest.raises(InvalidRequest, match="If-Match"):
            expected_version(request_with(if_match=bad))


@pytest.mark.asyncio
async def test_idempotency_keys_are_checked() -> None:
    assert idempotency_key(request_with()) is None
    assert idempotency_key(request_with(idempotency_key=" k-1 ")) == "k-1"
    for bad in ("  ", "x" * 201):
        with pytest.raises(InvalidRequest, match="Idempotency-Key"):
            idempotency_key(request_with(idempotency_key=bad))


@dataclass(frozen=True)
class Deposit:
    amount: int


account = Decider(
    lambda command, balance: [Deposited(amount=command.amount)],
    lambda balance, event: balance + event.amount,
    int,
)


class Gate:
    """A projection whose handler waits for the test, or fails when told to."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.fail = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    async def handle(self, ctx: ProjectionContext, event: RecordedEvent) -> None:
        self.entered.set()
        await self.release.wait()
        if self.fail:
            raise RuntimeError("the read model's database is gone")
        self.seen.append(event.position)


def make_app(gate: Gate, raises: dict[str, Exception]) -> tuple[Starlette, Eventfold]:
    store = AsyncMemoryEventStore()
    projection = Projection("gated", gate.handle, in_memory=True)
    web = Eventfold(lambda: store, runs=[projection], stop_timeout=10)

    async def deposit(request: Request) -> Response:
        result = await web.handle(request, web.handler(account), "acc", Deposit(5))
        return web.written(result, {"balance": result.state}, status=201)

    async def fail(request: Request) -> Response:
        raise raises[request.path_params["kind"]]

    async def balance(request: Request) -> Response:
        reached = await web.caught_up(request, "gated", timeout=0.2)
        return Response(str(reached))

    routes = [
        Route("/deposit", deposit, methods=["POST"]),
        Route("/fail/{kind}", fail),
        Route("/balance", balance),
    ]
    app = Starlette(routes=routes, lifespan=web.lifespan)
    web.install(app)
    return app, web


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[httpx.AsyncClient, Eventfold, Gate]]:
    gate = Gate()
    raises: dict[str, Exception] = {
        "missing": StreamNotFound("acc-9"),
        "conflict": WrongExpectedVersion("acc", 2, 5),
        "race": TransactionConflict("acc"),
        "invalid": InvalidRequest("bad stream name"),
        "down": StoreUnavailable("cannot reach PostgreSQL"),
        "slow": StoreTimeout("busy"),
        "behind": ProjectionBehind("gated", 10, 4, 5.0),
        "broken": RuntimeError("not ours"),
    }
    app, web = make_app(gate, raises)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            yield client, web, gate


@pytest.mark.asyncio
async def test_errors_are_http_statuses(served: Any) -> None:
    client, _, _ = served
    expected = {
        "missing": (404, {}),
        "conflict": (409, {"ETag": '"5"'}),
        "race": (409, {"Retry-After": "0"}),
        "invalid": (422, {}),
        "down": (503, {"Retry-After": "1"}),
        "slow": (503, {"Retry-After": "1"}),
        "behind": (503, {"Retry-After": "1"}),
    }
    for kind, (status, headers) in expected.items():
        response = await client.get(f"/fail/{kind}")
        assert response.status_code == status, (kind, response.text)
        for name, value in headers.items():
            assert response.headers[name] == value, kind
    conflict = (await client.get("/fail/conflict")).json()
    assert conflict == {
        "error": "WrongExpectedVersion",
        "detail": "stream 'acc': expected version 2, but the stream is at 5",
        "actual_version": 5,
    }
    # Not an eventfold error: the application's to map (a plain 500 here).
    assert (await client.get("/fail/broken")).status_code == 500


@pytest.mark.asyncio
async def test_a_write_answers_with_its_version_and_position_and_reads_follow_it(
    served: Any,
) -> None:
    client, _, gate = served
    written = await client.post("/deposit", headers={"Idempotency-Key": "d-1"})
    assert written.status_code == 201
    assert written.headers["ETag"] == '"1"'
    position = written.headers["Eventfold-Position"]
    assert written.json() == {"balance": 5, "version": 1, "position": position, "replayed": False}
    again = await client.post("/deposit", headers={"Idempotency-Key": "d-1"})
    assert again.json()["replayed"] is True and again.headers["Eventfold-Position"] == position
    # Read your write: the read waits until the projection has passed the position.
    reached = await client.get("/balance", headers={"Eventfold-Position": position})
    assert reached.status_code == 200 and int(reached.text) >= int(position)
    # A projection still behind after the timeout: 503, retry later.
    gate.release.clear()
    later = await client.post("/deposit")
    behind = await client.get(
        "/balance", headers={"Eventfold-Position": later.headers["Eventfold-Position"]}
    )
    assert behind.status_code == 503 and behind.json()["error"] == "ProjectionBehind"
    gate.release.set()
    stale = await client.post("/deposit", headers={"If-Match": '"1"'})
    assert stale.status_code == 409 and stale.json()["actual_version"] == 2


@pytest.mark.asyncio
async def test_health_is_503_while_a_runner_fails(served: Any) -> None:
    client, _, gate = served
    healthy = await client.get("/health")
    assert healthy.status_code == 200, healthy.text
    assert healthy.json()["runners"]["gated"]["ok"] is True
    gate.fail = True
    await client.post("/deposit")
    for _ in range(2000):  # the runner meets the failure, then backs off to restart
        unhealthy = await client.get("/health")
        if unhealthy.status_code == 503:
            break
        await asyncio.sleep(0.005)
    assert unhealthy.status_code == 503, unhealthy.text
    status = unhealthy.json()["runners"]["gated"]
    assert status["ok"] is False and "database is gone" in (status["last_error"] or "")


@pytest.mark.asyncio
async def test_shutdown_stops_the_runners_within_a_batch_and_leaves_no_task() -> None:
    gate = Gate()
    app, web = make_app(gate, {})
    before = set(asyncio.all_tasks())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            gate.release.clear()
            await client.post("/deposit")
            await asyncio.wait_for(gate.entered.wait(), 10)  # a batch is in hand
            gate.release.set()
    assert gate.seen  # the batch in hand finished before the store closed
    assert set(asyncio.all_tasks()) - before <= {asyncio.current_task()}
    assert web.runners == {}
    with pytest.raises(RuntimeError, match="lifespan"):
        web.store  # noqa: B018 - closed with the lifespan


def test_without_starlette_the_import_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['starlette'] = None\n"
        "try:\n"
        "    import eventfold.starlette\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'eventfold[starlette]'" in out.stdout


@pytest.mark.asyncio
async def test_a_runner_stuck_past_the_stop_timeout_is_cancelled_and_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = Gate()
    app, web = make_app(gate, {})
    web.stop_timeout = 0.2
    before = set(asyncio.all_tasks())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            gate.release.clear()  # the handler never finishes on its own
            await client.post("/deposit")
            await asyncio.wait_for(gate.entered.wait(), 10)
    assert set(asyncio.all_tasks()) - before <= {asyncio.current_task()}
    (record,) = [r for r in caplog.records if r.name == "eventfold.starlette"]
    assert "gated" in record.getMessage() and "cancelled" in record.getMessage()
    assert record.projection == "gated"  # type: ignore[attr-defined]
