"""The PostgreSQL store when connections break or lose a reply.

The tests run the real server behind a TCP proxy on 127.0.0.1
(tests/proxy.py) that can freeze, cut every connection, or drop the reply to
one request.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from eventfold import (
    NO_STREAM,
    NewEvent,
    StoreError,
    StoreUnavailable,
)
from eventfold.store.postgres import AsyncPostgresEventStore, PostgresEventStore, migrate
from eventfold.testing._events import Deposited, Opened
from tests.pg import free_loopback_port, new_schema_name
from tests.proxy import TcpProxy

T = TypeVar("T")
GUARD = 30.0  # no call in this module may block longer than this


@pytest.fixture
def schema(pg_database: str) -> str:
    name = new_schema_name()
    migrate(pg_database, schema=name)
    return name


@pytest.fixture
def proxy(pg_database: str) -> Iterator[TcpProxy]:
    with TcpProxy.to(pg_database) as running:
        yield running


def _until_it_works(call: Callable[[], T]) -> tuple[T, float, list[str]]:
    """Retry ``call`` on retryable errors, as an application would; result, seconds, errors."""
    started = time.monotonic()
    errors: list[str] = []
    while True:
        try:
            return call(), time.monotonic() - started, errors
        except StoreError as exc:
            assert exc.retryable, exc
            assert time.monotonic() - started < GUARD, f"not working after {GUARD:g} s: {exc}"
            errors.append(type(exc).__name__)


# -- D: a reply lost after the commit --------------------------------------------------------


def test_a_lost_reply_is_outcome_unknown_and_resending_the_same_events_is_exactly_once(
    pg_database: str, schema: str, proxy: TcpProxy
) -> None:
    url = proxy.conninfo(pg_database)
    attempts = 20
    with PostgresEventStore(url, schema=schema, max_size=1, connect_timeout=5) as store:
        store.last_position()
        for attempt in range(attempts):
            marker = f"lost-reply-{attempt}-{uuid.uuid4().hex}"
            event = NewEvent(data=Opened(owner=marker))
            # Alternately: a shared stream with expected=ANY (the resend hits the stored
            # id), a new stream with NO_STREAM (the resend finds the stream exists).
            stream, expected = ("shared", None) if attempt % 2 else (f"new-{attempt}", NO_STREAM)
            options: dict[str, Any] = {} if expected is None else {"expected": expected}
            proxy.lose_reply(marker.encode())
            with pytest.raises(StoreUnavailable) as info:
                store.append(stream, [event], **options)
            assert proxy.reply_lost.is_set(), "the proxy did not see the append"
            assert info.value.retryable and info.value.outcome_unknown
            message = str(info.value)
            assert "may or may not have been committed" in message and "NewEvent" in message
            stored, _, _ = _until_it_works(lambda e=event: store.find_event(e.id))
            assert stored is not None and stored.data == Opened(owner=marker)
            result = store.append(stream, [event], **options)
            assert (result.stream, result.to_version, result.position) == (
                stream,
                stored.version,
                stored.position,
            )
        ids = [e.id for e in store.read_all()]
    assert len(ids) == len(set(ids)) == attempts


@pytest.mark.asyncio
async def test_an_async_lost_reply_is_outcome_unknown(
    pg_database: str, schema: str, proxy: TcpProxy
) -> None:
    url = proxy.conninfo(pg_database)
    async with AsyncPostgresEventStore(url, schema=schema, max_size=1) as store:
        await store.last_position()
        batch = [
            NewEvent(data=Opened(owner="async-lost-reply")),
            NewEvent(data=Deposited(amount=1)),
        ]
        proxy.lose_reply(b"async-lost-reply")
        with pytest.raises(StoreUnavailable) as info:
            await asyncio.wait_for(store.append("s", batch), GUARD)
        assert info.value.outcome_unknown
        assert proxy.reply_lost.is_set()
        deadline = time.monotonic() + GUARD
        while True:
            try:
                result = await store.append("s", batch)
                break
            except StoreError as exc:
                assert exc.retryable and time.monotonic() < deadline
        assert (result.from_version, result.to_version) == (1, 2)
        assert [e.id async for e in store.read("s")] == [e.id for e in batch]


def test_no_connection_at_all_is_not_outcome_unknown() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_loopback_port()}/test"
    with (
        PostgresEventStore(url, connect_timeout=2) as store,
        pytest.raises(StoreUnavailable) as info,
    ):
        store.append("s", [NewEvent(data=Deposited(amount=1))])
    assert info.value.retryable and not info.value.outcome_unknown
    assert "may or may not" not in str(info.value)
