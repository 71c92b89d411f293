"""The order and inventory service over HTTP: FastAPI on eventfold.

The model, the saga (an order reserves stock, then is confirmed or rejected)
and the read model are the asyncio worker's (``examples/async_worker``);
this file is all a FastAPI service adds::

    PUT  /stock/{sku}           {"quantity": 5}     add stock
    PUT  /orders/{order}        {"sku", "quantity"} place an order (If-None-Match: *,
                                                    Idempotency-Key: a retry is answered
                                                    from the log, not placed twice)
    GET  /orders/{order}        its status, from the read model; send the write's
                                Eventfold-Position back to read your own write
    GET  /health                200 while the saga and the read model run

Run it (``pip install 'eventfold[fastapi]' uvicorn``)::

    SHOP_STORE=shop.db uvicorn examples.fastapi_shop.app:app

``test_fastapi_shop.py`` beside it drives it with httpx on SQLite and PostgreSQL.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from eventfold import AsyncSqliteEventStore
from eventfold.starlette import Eventfold
from eventfold.store import AsyncEventStore
from examples.async_worker import service


class StockIn(BaseModel):
    quantity: int = Field(gt=0)


class OrderIn(BaseModel):
    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(gt=0)


async def _one(cursor: Any) -> Any:
    row = cursor.fetchone()  # a coroutine on PostgreSQL, a row on SQLite
    return await row if inspect.isawaitable(row) else row


def create_app(open_store: Callable[[], AsyncEventStore]) -> FastAPI:
    """The service on the store ``open_store`` makes (called once, at startup)."""
    web = Eventfold(open_store, runs=[service.order_view(), service.reservations])
    app = FastAPI(title="shop", lifespan=web.lifespan)
    web.install(app)  # eventfold's errors as HTTP statuses; GET /health

    @app.exception_handler(service.OutOfStock)
    async def out_of_stock(request: Request, exc: service.OutOfStock) -> Response:
        return JSONResponse({"error": "OutOfStock", "detail": str(exc)}, status_code=409)

    @app.put("/stock/{sku}")
    async def add_stock(sku: str, body: StockIn, request: Request) -> Response:
        command = service.AddStock(body.quantity)
        result = await web.handle(request, web.handler(service.stock), f"stock-{sku}", command)
        return web.written(result, {"sku": sku, "available": result.state})

    @app.put("/orders/{order}")
    async def place(order: str, body: OrderIn, request: Request) -> Response:
        command = service.Place(body.sku, body.quantity)
        result = await web.handle(request, web.handler(service.orders), f"order-{order}", command)
        created = bool(result.events) and not result.replayed
        return web.written(result, {"order": order}, status=201 if created else 200)

    @app.get("/orders/{order}")
    async def status(order: str, request: Request) -> Response:
        await web.caught_up(request, "order-view")  # read your own write, if asked
        async with web.store.transaction() as tx:
            cursor = await tx.execute(
                "SELECT status FROM order_view WHERE id = ?", (f"order-{order}",)
            )
            row = await _one(cursor)
        if row is None:
            return JSONResponse({"error": "NotFound", "order": order}, status_code=404)
        return JSONResponse({"order": order, "status": row[0]})

    return app


def _from_environment() -> AsyncEventStore:
    return AsyncSqliteEventStore(os.environ.get("SHOP_STORE", "shop.db"), durability="normal")


#: The application for ``uvicorn examples.fastapi_shop.app:app``.
app = create_app(_from_environment)
