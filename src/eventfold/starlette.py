"""Starlette and FastAPI: the store and its runners in the lifespan, HTTP in and out.

``pip install 'eventfold[starlette]'`` (FastAPI is built on Starlette: the
same helpers serve both). What a service otherwise writes by hand::

    web = Eventfold(lambda: AsyncSqliteEventStore("shop.db"), runs=[orders_view, saga])
    app = FastAPI(lifespan=web.lifespan)
    web.install(app)                      # errors as HTTP statuses, GET /health

    @app.post("/orders/{order}/cancel")
    async def cancel(order: str, request: Request) -> Response:
        result = await web.handle(request, orders, f"order-{order}", Cancel())
        return web.written(result)        # ETag, Eventfold-Position, JSON

* **Lifespan**: :meth:`Eventfold.lifespan` opens the store, runs each
  projection and process manager with ``run_forever`` (restarted after a
  failure, stopped within one batch on shutdown), and closes the store.
* **Requests**: ``If-Match: "3"`` is the expected version (``If-None-Match:
  *``: the stream must be new), ``Idempotency-Key`` the idempotency key
  (:meth:`Eventfold.handle`).
* **Responses**: :meth:`Eventfold.written` answers with the version as an
  ``ETag``, the position in ``Eventfold-Position`` and the JSON body (the
  position as a string: PostgreSQL's exceed JavaScript's exact integers).
* **Read your writes**: :meth:`Eventfold.caught_up` waits until a projection
  has passed the position the client sends back in ``Eventfold-Position``.
* **Errors** (:meth:`Eventfold.install`): a stream not found is 404, a
  version conflict 409 (with the actual version), an invalid request 422, an
  unavailable store or a projection still behind 503 with ``Retry-After``.
  Your own domain exceptions are yours to map.
* **Health**: ``GET /health`` is 200 while every runner runs without error,
  else 503, with each runner's status.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from eventfold._acompat import next_poll
from eventfold._logs import fields
from eventfold.commands import AsyncCommandHandler, CommandResult
from eventfold.errors import (
    ConcurrencyError,
    EventfoldError,
    InvalidRequest,
    ProjectionBehind,
    StoreError,
    StreamNotFound,
    WrongExpectedVersion,
)
from eventfold.processes import AsyncProcessManager
from eventfold.projections import AsyncProjectionRunner, Projection
from eventfold.store import AsyncEventStore

try:
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "eventfold.starlette needs Starlette: pip install 'eventfold[starlette]'"
    ) from exc

__all__ = ["POSITION_HEADER", "Eventfold", "etag", "expected_version", "idempotency_key"]

logger = logging.getLogger("eventfold.starlette")

#: The response header with the position of a write, and the request header
#: a client sends back to read its own write.
POSITION_HEADER = "Eventfold-Position"
_ETAG = re.compile(r'^(?:W/)?"(\d+)"$|^(\d+)$')
_MAX_KEY = 200
#: The first pause of a look at a local runner's position (a live runner is quick).
_FIRST_LOOK = 0.0002


def etag(version: int) -> str:
    """The ETag of a stream at ``version``: ``"3"``."""
    return f'"{version}"'


def expected_version(request: Request) -> int | None:
    """The version the request expects its stream at: ``If-Match`` (an ETag from
    :func:`etag`), 0 for ``If-None-Match: *`` (a new stream), else None (any)."""
    match = request.headers.get("if-match")
    if match is not None:
        found = _ETAG.match(match.strip())
        if found is None:
            raise InvalidRequest(f'If-Match must be an ETag such as "3", not {match!r}')
        return int(found.group(1) or found.group(2))
    if request.headers.get("if-none-match", "").strip() == "*":
        return 0
    return None


def idempotency_key(request: Request) -> str | None:
    """The request's ``Idempotency-Key`` (a retried request sends the same one)."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > _MAX_KEY:
        raise InvalidRequest(f"Idempotency-Key must be 1 to {_MAX_KEY} characters")
    return key


#: What runs in the background: a projection, a process manager, or a function
#: that makes one from the open store (a saga's command handlers need it).
Runnable = Projection | AsyncProcessManager | Callable[[AsyncEventStore], Any]


async def _poll(
    name: str, reached: Callable[[], Awaitable[int]], position: int, timeout: float
) -> int:
    """Look at ``reached()`` until it is ``position`` or more (0.2 ms, doubling to 50 ms)."""
    deadline = time.monotonic() + timeout
    pause = _FIRST_LOOK
    while (current := await reached()) < position:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProjectionBehind(name, position, current, timeout)
        await asyncio.sleep(min(pause, remaining))
        pause = next_poll(pause)
    return current


class Eventfold:
    """A service's store and background runners, and its HTTP conventions.

    :param open_store: makes the async store (called once, in the lifespan).
    :param runs: projections and process managers to run in the background.
    :param stop_timeout: how long shutdown waits for the runners (seconds).
    :param health_path: where :meth:`install` serves the health check (None: nowhere).
    """

    def __init__(
        self,
        open_store: Callable[[], AsyncEventStore],
        *,
        runs: Sequence[Runnable] = (),
        stop_timeout: float = 30.0,
        health_path: str | None = "/health",
    ) -> None:
        self._open_store = open_store
        self._runs = list(runs)
        self.stop_timeout = stop_timeout
        self.health_path = health_path
        self._store: AsyncEventStore | None = None
        self.runners: dict[str, AsyncProjectionRunner] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._handlers: dict[int, tuple[Any, AsyncCommandHandler[Any, Any]]] = {}

    @property
    def store(self) -> AsyncEventStore:
        """The open store (inside the lifespan)."""
        if self._store is None:
            raise RuntimeError("the store is open only inside the application's lifespan")
        return self._store

    def get_store(self) -> AsyncEventStore:
        """The open store: a FastAPI dependency (``Depends(web.get_store)``)."""
        return self.store

    def handler(self, model: Any, **options: Any) -> AsyncCommandHandler[Any, Any]:
        """The command handler of ``model`` (a decider or aggregate class) on the store:
        made once per lifespan (options as ``AsyncCommandHandler`` takes), then reused."""
        key = id(model)
        found = self._handlers.get(key)
        if found is None or found[0] is not model:
            found = (model, AsyncCommandHandler(self.store, model, **options))
            self._handlers[key] = found
        return found[1]

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """Open the store, run the runners until shutdown, then stop them and close it."""
        store = self._open_store()
        async with store:
            self._store = store
            stop = asyncio.Event()
            for item in self._runs:
                made: Any = item
                if not isinstance(item, Projection) and not hasattr(item, "projection"):
                    made = item(store)
                # A process manager runs as its projection; a projection as itself.
                projection: Projection = getattr(made, "projection", made)
                runner = AsyncProjectionRunner(store, projection)
                name = runner.projection.name
                self.runners[name] = runner
                self._tasks[name] = asyncio.create_task(
                    runner.run_forever(stop), name=f"eventfold runner {name}"
                )
            if hasattr(app, "state"):
                app.state.eventfold = self
            try:
                yield
            finally:
                stop.set()
                await self._stop_runners()
                self._store = None
                self._handlers.clear()
                self.runners.clear()

    async def _stop_runners(self) -> None:
        names = {task: name for name, task in self._tasks.items()}
        self._tasks.clear()
        if not names:
            return
        done, pending = await asyncio.wait(names, timeout=self.stop_timeout)
        for task in pending:  # a handler stuck beyond the timeout: cancel it
            logger.warning(
                "projection %s did not stop within %.0f s of shutdown: cancelled",
                names[task],
                self.stop_timeout,
                extra=fields(projection=names[task]),
            )
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                logger.error(
                    "projection %s ended with %r",
                    names[task],
                    task.exception(),
                    extra=fields(projection=names[task]),
                )

    # -- requests and responses -----------------------------------------------------------

    async def handle(
        self,
        request: Request,
        handler: AsyncCommandHandler[Any, Any],
        stream: str,
        command: Any,
        **options: Any,
    ) -> CommandResult[Any]:
        """``handler.handle(stream, command)`` with the request's ``If-Match`` and
        ``Idempotency-Key`` as the expected version and idempotency key."""
        return await handler.handle(
            stream,
            command,
            expected_version=expected_version(request),
            idempotency_key=idempotency_key(request),
            **options,
        )

    def written(
        self, result: CommandResult[Any], body: dict[str, Any] | None = None, status: int = 200
    ) -> JSONResponse:
        """The answer to a write: ``ETag``, ``Eventfold-Position`` and a JSON body
        (``body``, with ``version``, ``position`` as a string and ``replayed``)."""
        content = {
            **(body or {}),
            "version": result.version,
            "position": str(result.position),
            "replayed": result.replayed,
        }
        headers = {"ETag": etag(result.version), POSITION_HEADER: str(result.position)}
        return JSONResponse(content, status_code=status, headers=headers)

    async def caught_up(self, request: Request, projection: str, timeout: float = 5.0) -> int:
        """Wait until ``projection`` has passed the position the client sent in
        ``Eventfold-Position`` (none sent: no wait); its checkpoint, or 0. An
        in-memory read model run here is looked at in its runner.

        A projection still behind after ``timeout`` raises ProjectionBehind (503).
        """
        sent = request.headers.get(POSITION_HEADER.lower())
        if sent is None:
            return 0
        if not sent.strip().isdigit():
            raise InvalidRequest(f"{POSITION_HEADER} must be a position, not {sent!r}")
        position = int(sent)
        runner = self.runners.get(projection)
        if runner is not None and runner.projection.in_memory:
            # Its position lives in its runner, here: look at it, backing off.
            return await _poll(projection, runner.get_position, position, timeout)
        return await self.store.wait_for(projection, position, timeout=timeout)

    # -- errors and health ------------------------------------------------------------------

    def install(self, app: Any) -> None:
        """Map eventfold's errors to HTTP statuses; serve the health check."""
        app.add_exception_handler(EventfoldError, self.error_response)
        if self.health_path is not None:
            app.router.routes.append(Route(self.health_path, self.health, methods=["GET"]))

    async def error_response(self, request: Request, exc: Exception) -> Response:
        """The HTTP answer to an eventfold error (see the module docstring)."""
        body: dict[str, Any] = {"error": type(exc).__name__, "detail": str(exc)}
        headers: dict[str, str] = {}
        if isinstance(exc, StreamNotFound):
            status = 404
        elif isinstance(exc, WrongExpectedVersion):
            status = 409
            body["actual_version"] = exc.actual
            headers["ETag"] = etag(exc.actual)
        elif isinstance(exc, ConcurrencyError):
            status, headers["Retry-After"] = 409, "0"
        elif isinstance(exc, InvalidRequest):
            status = 422
        elif isinstance(exc, ProjectionBehind) or (isinstance(exc, StoreError) and exc.retryable):
            status, headers["Retry-After"] = 503, "1"
        else:
            logger.error("%s %s: %r", request.method, request.url.path, exc)
            status = 500
        return JSONResponse(body, status_code=status, headers=headers)

    async def health(self, request: Request) -> Response:
        """200 while every runner runs without an error, else 503; with their statuses."""
        runners: dict[str, Any] = {}
        healthy = self._store is not None
        for name, runner in self.runners.items():
            status = await runner.status()
            task = self._tasks.get(name)
            alive = task is not None and not task.done()
            ok = alive and status.last_error is None
            healthy = healthy and ok
            runners[name] = {
                "ok": ok,
                "running": alive,
                "standby": status.standby,
                "position": str(status.position),
                "lag_events": status.lag_events,
                "lag_seconds": status.lag_seconds,
                "last_error": status.last_error,
                "restarts": status.restarts,
            }
        body = {"status": "ok" if healthy else "unhealthy", "runners": runners}
        return JSONResponse(body, status_code=200 if healthy else 503)
