"""Property: any bad input to any store call gets a typed error naming the problem,
and the store is left exactly as it was.

Runs on every backend, sync and async, with a bounded number of generated
calls (the hypothesis profile in conftest.py): bad stream names, versions,
positions, limits, flags, durations, ids, event objects, metadata and
snapshot arguments.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventfold import (
    AsyncMemoryEventStore,
    AsyncSqliteEventStore,
    EventfoldError,
    MemoryEventStore,
    NewEvent,
    SqliteEventStore,
    StreamAppend,
)
from eventfold.store.postgres import AsyncPostgresEventStore, PostgresEventStore, migrate
from eventfold.testing._events import Deposited, Measured, Received, Unserialisable
from tests.support.pg import new_schema_name

NAN, INF = math.nan, math.inf


@dataclass(frozen=True)
class BadCall:
    """One store call with one bad argument, and the word its error must contain."""

    what: str
    call: Callable[[Any], Any]
    mentions: str

    def __repr__(self) -> str:
        return f"BadCall({self.what})"


def call(what: str, mentions: str) -> Callable[[Callable[[Any], Any]], BadCall]:
    return lambda fn: BadCall(what, fn, mentions)


not_int = st.one_of(st.floats(), st.booleans(), st.text(max_size=3), st.none())
negative = st.integers(max_value=-1)
beyond_64_bits = st.integers(min_value=2**63, max_value=2**80)
bad_version = st.one_of(negative, beyond_64_bits, st.floats(), st.booleans(), st.text(max_size=3))
bad_position = st.one_of(negative, st.floats(), st.booleans(), st.text(max_size=3))
bad_limit = st.one_of(negative, st.floats(), st.booleans(), st.text(max_size=3))
bad_flag = st.one_of(st.integers(), st.text(max_size=5), st.none(), st.floats())
bad_seconds = st.one_of(
    st.floats(max_value=0), st.sampled_from([NAN, INF, -INF]), st.text(max_size=3), st.booleans()
)
bad_stream = st.one_of(
    st.integers(),
    st.none(),
    st.just(""),
    st.text(min_size=1, max_size=5).map(lambda s: f" {s}"),
    st.text(max_size=5).map(lambda s: f"{s}\x00"),
    st.just("x" * 513),
    st.binary(min_size=1, max_size=4),
)
non_finite = st.sampled_from([NAN, INF, -INF])
untyped_changes = st.one_of(
    st.binary(max_size=4),
    st.tuples(st.integers()),
    st.sets(st.integers(), min_size=1, max_size=3),
    st.datetimes(),
    st.uuids(),
    st.dictionaries(st.integers(), st.text(max_size=3), min_size=1, max_size=2),
    non_finite,
    st.lists(non_finite, min_size=1, max_size=2),
)
bad_metadata = st.one_of(
    st.lists(st.integers(), max_size=2),
    st.text(max_size=4),
    st.integers(),
    st.binary(max_size=4),
    st.none(),
    st.sets(st.integers(), max_size=2),
    st.dictionaries(st.integers(), st.text(max_size=2), min_size=1, max_size=2),
    st.dictionaries(st.text(max_size=3), non_finite, min_size=1, max_size=2),
    st.dictionaries(st.text(max_size=3), st.binary(max_size=3), min_size=1, max_size=2),
)


def _bad_event() -> st.SearchStrategy[tuple[object, str]]:
    """(event, the word the error names)."""
    return st.one_of(
        st.builds(
            Received, quantity=st.one_of(st.floats(), st.text(max_size=3), st.booleans())
        ).map(lambda e: (e, "quantity")),
        st.builds(Measured, value=non_finite).map(lambda e: (e, "value")),
        st.builds(Unserialisable, payload=untyped_changes).map(lambda e: (e, "payload")),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2).map(lambda e: (e, "dict")),
        st.integers().map(lambda e: (e, "int")),
        st.none().map(lambda e: (e, "NoneType")),
    )


def _append_calls() -> st.SearchStrategy[BadCall]:
    ok = [Deposited(amount=1)]
    return st.one_of(
        bad_stream.map(lambda s: BadCall("append stream", lambda st_: st_.append(s, ok), "stream")),
        st.one_of(st.just(Deposited(amount=1)), st.text(max_size=3), st.none(), st.integers()).map(
            lambda evs: BadCall("append events", lambda st_: st_.append("new", evs), "events")
        ),
        _bad_event().map(
            lambda pair: BadCall(
                "append event",
                lambda st_: st_.append("new", [Deposited(amount=1), pair[0]]),
                pair[1],
            )
        ),
        bad_metadata.map(
            lambda m: BadCall(
                "append metadata",
                lambda st_: st_.append("new", [NewEvent(data=Deposited(amount=1), metadata=m)]),
                "metadata",
            )
        ),
        st.one_of(st.text(max_size=3), st.integers(), st.binary(min_size=16, max_size=16)).map(
            lambda i: BadCall(
                "append id",
                lambda st_: st_.append("new", [NewEvent(data=Deposited(amount=1), id=i)]),
                "id",
            )
        ),
        st.one_of(negative, st.floats(), st.booleans(), st.text(max_size=3), st.none()).map(
            lambda x: BadCall(
                "append expected", lambda st_: st_.append("new", ok, expected=x), "expected"
            )
        ),
    )


def _many(part: Any) -> Callable[[Any], Any]:
    """append_many with a valid part first, then ``part``: nothing of either may be written."""
    return lambda st_: st_.append_many([StreamAppend("new", [Deposited(amount=1)]), part])


def _append_many_calls() -> st.SearchStrategy[BadCall]:
    ok = [Deposited(amount=1)]
    return st.one_of(
        st.one_of(
            st.just(StreamAppend("new", ok)), st.text(max_size=3), st.none(), st.integers()
        ).map(lambda a: BadCall("append_many appends", lambda st_: st_.append_many(a), "appends")),
        st.one_of(
            st.tuples(st.just("new2"), st.just(ok)),
            st.none(),
            st.dictionaries(st.text(), st.text()),
        ).map(lambda p: BadCall("append_many part", _many(p), "StreamAppend")),
        bad_stream.map(
            lambda s: BadCall("append_many stream", _many(StreamAppend(s, ok)), "stream")
        ),
        st.one_of(negative, st.floats(), st.booleans(), st.text(max_size=3), st.none()).map(
            lambda x: BadCall(
                "append_many expected", _many(StreamAppend("new2", ok, expected=x)), "expected"
            )
        ),
        st.one_of(st.just(Deposited(amount=1)), st.text(max_size=3), st.none(), st.integers()).map(
            lambda evs: BadCall("append_many events", _many(StreamAppend("new2", evs)), "events")
        ),
        _bad_event().map(
            lambda pair: BadCall(
                "append_many event", _many(StreamAppend("new2", [*ok, pair[0]])), pair[1]
            )
        ),
        st.sampled_from(["new", "acc"]).map(
            lambda name: BadCall(
                "append_many twice",
                lambda st_: st_.append_many(
                    [StreamAppend(name, ok), StreamAppend("other", ok), StreamAppend(name, ok)]
                ),
                "twice",
            )
        ),
        st.uuids().map(
            lambda i: BadCall(
                "append_many shared id",
                lambda st_: st_.append_many(
                    [
                        StreamAppend("new", [NewEvent(data=Deposited(amount=1), id=i)]),
                        StreamAppend("new2", [NewEvent(data=Deposited(amount=2), id=i)]),
                    ]
                ),
                "event id",
            )
        ),
    )


def _read_calls() -> st.SearchStrategy[BadCall]:
    return st.one_of(
        bad_stream.map(lambda s: BadCall("read stream", lambda st_: st_.read(s), "stream")),
        bad_stream.map(lambda s: BadCall("get_stream", lambda st_: st_.get_stream(s), "stream")),
        bad_stream.map(lambda s: BadCall("restore", lambda st_: st_.restore_stream(s), "stream")),
        bad_version.map(
            lambda v: BadCall(
                "read from", lambda st_: st_.read("acc", from_version=v), "from_version"
            )
        ),
        bad_flag.map(
            lambda f: BadCall(
                "read backwards", lambda st_: st_.read("acc", backwards=f), "backwards"
            )
        ),
        st.one_of(bad_version, st.just(0)).map(
            lambda v: BadCall("read to", lambda st_: st_.read("acc", to_version=v), "to_version")
        ),
        bad_position.map(
            lambda p: BadCall("read_all to", lambda st_: st_.read_all(to_position=p), "to_position")
        ),
        st.one_of(st.integers(), st.text(max_size=3), st.booleans(), st.floats()).map(
            lambda e: BadCall("subscribe stop", lambda st_: st_.subscribe(stop=e), "stop")
        ),
        bad_stream.map(
            lambda s: BadCall("list_snapshots", lambda st_: st_.list_snapshots(s), "stream")
        ),
        bad_limit.map(
            lambda n: BadCall("read limit", lambda st_: st_.read("acc", limit=n), "limit")
        ),
        bad_position.map(
            lambda p: BadCall("read_all after", lambda st_: st_.read_all(after=p), "after")
        ),
        bad_limit.map(
            lambda n: BadCall("read_all limit", lambda st_: st_.read_all(limit=n), "limit")
        ),
        st.one_of(
            st.text(min_size=1, max_size=3), st.lists(st.integers(), min_size=1, max_size=2)
        ).map(lambda t: BadCall("read_all types", lambda st_: st_.read_all(types=t), "types")),
        st.one_of(st.just(""), st.integers()).map(
            lambda p: BadCall(
                "read_all prefix", lambda st_: st_.read_all(stream_prefix=p), "stream_prefix"
            )
        ),
        st.datetimes().map(
            lambda d: BadCall("read_all since", lambda st_: st_.read_all(since=d), "since")
        ),
        bad_seconds.map(
            lambda s: BadCall(
                "subscribe poll", lambda st_: st_.subscribe(poll_interval=s), "poll_interval"
            )
        ),
        bad_position.map(
            lambda p: BadCall("subscribe after", lambda st_: st_.subscribe(after=p), "after")
        ),
        st.one_of(st.integers(), st.none(), st.just(""), st.binary(max_size=3)).map(
            lambda n: BadCall("wait_for name", lambda st_: st_.wait_for(n, 1), "projection")
        ),
        bad_position.map(
            lambda p: BadCall("wait_for position", lambda st_: st_.wait_for("p", p), "position")
        ),
        st.one_of(
            st.floats(max_value=-1e-9),
            st.sampled_from([NAN, INF, -INF]),
            st.text(max_size=3),
            st.booleans(),
        ).map(
            lambda t: BadCall(
                "wait_for timeout", lambda st_: st_.wait_for("p", 1, timeout=t), "timeout"
            )
        ),
        st.one_of(st.text(max_size=3), st.integers(), st.binary(min_size=16, max_size=16)).map(
            lambda i: BadCall("find_event", lambda st_: st_.find_event(i), "event_id")
        ),
    )


def _lifecycle_calls() -> st.SearchStrategy[BadCall]:
    return st.one_of(
        bad_flag.map(
            lambda f: BadCall("delete hard", lambda st_: st_.delete_stream("acc", hard=f), "hard")
        ),
        st.one_of(st.integers(), st.none()).map(
            lambda b: BadCall("delete by", lambda st_: st_.delete_stream("acc", by=b), "by")
        ),
        bad_version.map(
            lambda v: BadCall(
                "truncate", lambda st_: st_.truncate_stream("acc", v), "before_version"
            )
        ),
        bad_metadata.filter(lambda m: m is not None).map(
            lambda m: BadCall(
                "stream metadata", lambda st_: st_.set_stream_metadata("acc", m), "metadata"
            )
        ),
        bad_version.map(
            lambda v: BadCall(
                "save_snapshot version",
                lambda st_: st_.save_snapshot("acc", v, "T", 1, b"{}"),
                "version",
            )
        ),
        bad_version.map(
            lambda v: BadCall(
                "save_snapshot schema",
                lambda st_: st_.save_snapshot("acc", 1, "T", v, b"{}"),
                "schema_version",
            )
        ),
        st.one_of(st.just(""), st.integers(), st.none()).map(
            lambda t: BadCall(
                "save_snapshot type",
                lambda st_: st_.save_snapshot("acc", 1, t, 1, b"{}"),
                "state_type",
            )
        ),
        st.one_of(st.text(max_size=3), st.none(), st.integers()).map(
            lambda d: BadCall(
                "save_snapshot data", lambda st_: st_.save_snapshot("acc", 1, "T", 1, d), "data"
            )
        ),
        bad_version.map(
            lambda v: BadCall(
                "load_snapshot", lambda st_: st_.load_snapshot("acc", max_version=v), "max_version"
            )
        ),
        bad_version.map(
            lambda v: BadCall(
                "delete_snapshots",
                lambda st_: st_.delete_snapshots(keep_schema_version=v),
                "keep_schema_version",
            )
        ),
    )


def _hook_calls() -> st.SearchStrategy[BadCall]:
    return st.one_of(
        st.one_of(st.none(), st.integers(), st.text(max_size=3)).map(
            lambda h: BadCall("add hook", lambda st_: st_.add_append_hook(h), "hook")
        ),
        st.just(lambda tx, events: None).map(
            lambda h: BadCall("remove hook", lambda st_: st_.remove_append_hook(h), "hook")
        ),
    )


bad_calls = st.one_of(
    _append_calls(), _append_many_calls(), _read_calls(), _lifecycle_calls(), _hook_calls()
)


# -- running a call on a sync or an async store ----------------------------------------------


class Target:
    """A store and how to run a call on it to completion (sync or async)."""

    def __init__(self, store: Any, loop: asyncio.AbstractEventLoop | None) -> None:
        self.store = store
        self.loop = loop

    def run(self, fn: Callable[[Any], Any]) -> Any:
        if self.loop is None:
            result = fn(self.store)
            if isinstance(result, Iterator):
                return next(result, None)  # a bad argument raises on the first step
            return result
        return self.loop.run_until_complete(self._run_async(fn))

    async def _run_async(self, fn: Callable[[Any], Any]) -> Any:
        result = fn(self.store)
        if isinstance(result, AsyncIterator):
            return await anext(result, None)
        return await result

    def state(self) -> Any:
        """Everything a reader can see of the prepared stream and the log."""

        async def read() -> Any:
            events = [e async for e in self.store.read_all()]
            return events, await self.store.get_stream("acc"), await self.store.load_snapshot("acc")

        if self.loop is not None:
            events, info, snapshot = self.loop.run_until_complete(read())
        else:
            events = list(self.store.read_all())
            info, snapshot = self.store.get_stream("acc"), self.store.load_snapshot("acc")
        rows = [(e.position, e.stream, e.version, e.id, e.data, dict(e.metadata)) for e in events]
        return rows, info, snapshot


def _prepare(store: Any) -> Any:
    """A stream with events, metadata and a snapshot, so that a bad call has something to harm."""
    return [
        store.append("acc", [Deposited(amount=1), Received(quantity=2)]),
        store.append("acc", [NewEvent(data=Deposited(amount=3), metadata={"k": [1, "x"]})]),
        store.set_stream_metadata("acc", {"owner": "ann"}),
        store.save_snapshot("acc", 2, "T", 1, b"{}"),
    ]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["sync", "async"])
def target(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[Target]:
    url = request.getfixturevalue("pg_database") if backend == "postgres" else ""
    schema = new_schema_name()
    if backend == "postgres":
        migrate(url, schema=schema)
    if request.param == "sync":
        store: Any = {
            "memory": MemoryEventStore,
            "sqlite": lambda: SqliteEventStore(tmp_path / "bad.db", durability="off"),
            "postgres": lambda: PostgresEventStore(url, schema=schema, max_size=2),
        }[backend]()
        _prepare(store)
        yield Target(store, None)
        store.close()
        return
    loop = asyncio.new_event_loop()

    async def open_store() -> Any:
        async_store: Any = {
            "memory": AsyncMemoryEventStore,
            "sqlite": lambda: AsyncSqliteEventStore(tmp_path / "bad.db", durability="off"),
            "postgres": lambda: AsyncPostgresEventStore(url, schema=schema, max_size=2),
        }[backend]()
        for step in _prepare(async_store):
            await step
        return async_store

    async_store = loop.run_until_complete(open_store())
    yield Target(async_store, loop)
    loop.run_until_complete(async_store.close())
    loop.close()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=bad_calls)
def test_bad_input_gets_a_typed_error_and_changes_nothing(target: Target, bad: BadCall) -> None:
    before = target.state()
    with pytest.raises(EventfoldError) as info:
        target.run(bad.call)
    message = str(info.value)
    assert bad.mentions.lower() in message.lower(), (bad.what, message)
    assert target.state() == before


def test_the_generated_calls_cover_every_public_method() -> None:
    """The strategies above name every store method that takes arguments."""
    covered = {
        "append", "append_many", "read", "read_all", "subscribe", "find_event", "delete_stream",
        "truncate_stream", "set_stream_metadata", "save_snapshot", "load_snapshot",
        "delete_snapshots", "get_stream", "restore_stream", "add_append_hook",
        "remove_append_hook", "list_snapshots", "wait_for",
    }  # fmt: skip
    public = {
        name
        for name in dir(MemoryEventStore)
        if not name.startswith("_") and callable(getattr(MemoryEventStore, name))
    }
    takes_no_arguments = {"close", "last_position", "checkpoints", "transaction"}
    assert public - takes_no_arguments == covered
