"""Options of stores, handlers, projections and runners: a bad value is refused at once,
with the option named (NaN and infinite durations, bools where ints belong, "no" for a flag)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from eventfold import (
    CommandHandler,
    ConfigurationError,
    Decider,
    InvalidRequest,
    MemoryEventStore,
    SqliteEventStore,
)
from eventfold.projections import ErrorPolicy, Projection, ProjectionRunner
from eventfold.serialization import Serializer
from eventfold.store.postgres import PostgresEventStore

URL = "postgresql://postgres@127.0.0.1:5432/postgres"  # never connected to: refused before
ledger: Decider[int, int, int] = Decider(lambda c, s: [c], lambda s, e: s + e, int)


def handle(ctx: Any, event: Any) -> None:
    return None


CASES: list[tuple[str, Callable[[Any], object], list[Any], type[Exception]]] = [
    (
        "busy_timeout",
        lambda v: SqliteEventStore(":memory:", busy_timeout=v),
        [math.nan, math.inf, -1, "5"],
        ConfigurationError,
    ),
    (
        "read_only",
        lambda v: SqliteEventStore(":memory:", read_only=v),
        ["no", 1],
        ConfigurationError,
    ),
    (
        "connect_timeout",
        lambda v: PostgresEventStore(URL, connect_timeout=v),
        [math.nan, math.inf, 0],
        ConfigurationError,
    ),
    (
        "statement_timeout",
        lambda v: PostgresEventStore(URL, statement_timeout=v),
        [math.nan, -1],
        ConfigurationError,
    ),
    (
        "stall_timeout",
        lambda v: PostgresEventStore(URL, stall_timeout=v),
        [math.inf, 0],
        ConfigurationError,
    ),
    ("min_size", lambda v: PostgresEventStore(URL, min_size=v), [True, 0, 1.5], ConfigurationError),
    ("notify", lambda v: PostgresEventStore(URL, notify=v), ["no", 0], ConfigurationError),
    ("page_size", lambda v: MemoryEventStore(page_size=v), [0, True, 2**64], InvalidRequest),
    ("on_unknown", lambda v: Serializer(on_unknown=v), ["ignore"], ConfigurationError),
    (
        "retry_delay",
        lambda v: CommandHandler(MemoryEventStore(), ledger, retry_delay=v),
        [math.nan, math.inf, -1],
        InvalidRequest,
    ),
    (
        "max_retries",
        lambda v: CommandHandler(MemoryEventStore(), ledger, max_retries=v),
        [True, -1, 1.0],
        InvalidRequest,
    ),
    ("backoff", lambda v: ErrorPolicy(backoff=v), [math.nan, math.inf, -0.5], InvalidRequest),
    ("retries", lambda v: ErrorPolicy(retries=v), [True, -1], InvalidRequest),
    ("batch_size", lambda v: Projection("p", handle, batch_size=v), [0, True, 2.0], InvalidRequest),
    ("in_memory", lambda v: Projection("p", handle, in_memory=v), ["yes", 1], InvalidRequest),
    ("external", lambda v: Projection("p", handle, external=v), ["no", 0], InvalidRequest),
    ("handle", lambda v: Projection("p", v), [None, "f"], InvalidRequest),
    (
        "lease_seconds",
        lambda v: ProjectionRunner(MemoryEventStore(), Projection("p", handle), lease_seconds=v),
        [math.nan, math.inf, 0],
        InvalidRequest,
    ),
    (
        "poll_interval",
        lambda v: ProjectionRunner(MemoryEventStore(), Projection("p", handle), poll_interval=v),
        [math.nan, -1],
        InvalidRequest,
    ),
]


@pytest.mark.parametrize(
    ("option", "make", "value", "error"),
    [(name, make, value, error) for name, make, values, error in CASES for value in values],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_a_bad_option_is_refused_naming_it(
    option: str, make: Callable[[Any], object], value: Any, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        make(value)
    assert option in str(info.value)
