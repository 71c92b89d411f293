"""A store written outside eventfold runs projections through the public seams only.

``WrappedStore`` is what a third party writes: a class of its own (no
eventfold base class) that keeps the store protocol by delegating to another
store, and provides the seams with eventfold's public ProcessCheckpoints. It
passes the conformance suites and runs a ProjectionRunner and a process
manager, which see nothing but its public methods.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest

from eventfold import (
    CommandHandler,
    ConfigurationError,
    Decider,
    MemoryEventStore,
    RecordedEvent,
)
from eventfold.processes import Dispatch, ProcessManager
from eventfold.projections import Projection, ProjectionContext, ProjectionRunner
from eventfold.store import (
    AppendHook,
    DirectTransaction,
    EventStore,
    ProcessCheckpoints,
    Transaction,
)
from eventfold.testing import CheckpointsSuite, EventStoreSuite, ProjectionsSuite
from eventfold.testing._events import Deposited, Withdrawn


class WrappedStore:
    """A third-party store: the protocol by delegation, the seams from public parts."""

    def __init__(self) -> None:
        self._inner = MemoryEventStore()
        self._checkpoints = ProcessCheckpoints(self)

    # The protocol, delegated (a real backend would talk to its database here).
    @property
    def serializer(self) -> Any:
        return self._inner.serializer

    @serializer.setter
    def serializer(self, value: Any) -> None:
        self._inner.serializer = value

    @property
    def page_size(self) -> int:
        return self._inner.page_size

    @page_size.setter
    def page_size(self, value: int) -> None:
        self._inner.page_size = value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __enter__(self) -> WrappedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()

    # The seams.
    def checkpoints(self) -> ProcessCheckpoints:
        return self._checkpoints

    def transaction(self) -> AbstractContextManager[Transaction]:
        return self._transaction()

    def wait_for(self, projection: str, position: int, *, timeout: float = 5.0) -> int:
        return self._checkpoints.wait_for(projection, position, timeout)

    @contextmanager
    def _transaction(self) -> Iterator[Transaction]:
        yield DirectTransaction(self)

    def add_append_hook(self, hook: AppendHook) -> None:
        raise ConfigurationError("WrappedStore takes no append hooks")

    def remove_append_hook(self, hook: AppendHook) -> None:
        raise ConfigurationError("WrappedStore takes no append hooks")

    def set_stream_metadata(self, stream: str, metadata: Mapping[str, Any]) -> None:
        self._inner.set_stream_metadata(stream, metadata)

    def append(self, stream: str, events: Sequence[object], **kwargs: Any) -> Any:
        return self._inner.append(stream, events, **kwargs)


@pytest.fixture
def wrapped() -> Iterator[WrappedStore]:
    with WrappedStore() as store:
        yield store


class TestWrappedStore(EventStoreSuite, CheckpointsSuite, ProjectionsSuite):
    append_hooks = False  # WrappedStore refuses them

    @pytest.fixture
    def store(self, wrapped: WrappedStore) -> WrappedStore:
        return wrapped


def test_it_keeps_the_protocol_and_is_no_eventfold_class(wrapped: WrappedStore) -> None:
    assert isinstance(wrapped, EventStore)
    assert not any(cls.__module__.startswith("eventfold") for cls in type(wrapped).__mro__[:-1])


def test_a_projection_runner_follows_it(wrapped: WrappedStore) -> None:
    totals: dict[str, int] = {}
    seen = threading.Condition()

    def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
        with seen:
            totals[event.stream] = totals.get(event.stream, 0) + event.data.amount
            seen.notify_all()

    projection = Projection("totals", handle, types=["eventfold.testing.Deposited"])
    wrapped.append("a", [Deposited(amount=1), Withdrawn(amount=5), Deposited(amount=2)])
    runner = ProjectionRunner(wrapped, projection, poll_interval=0.05)  # type: ignore[arg-type]
    assert runner.run_once() == 2
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    try:
        wrapped.append("b", [Deposited(amount=10)])  # live: the runner's wait notices it
        with seen:
            assert seen.wait_for(lambda: totals.get("b") == 10, timeout=30)
    finally:
        stop.set()
        thread.join(10)
    assert totals == {"a": 3, "b": 10}
    status = runner.status()
    assert status.lag_events == 0 and not status.running


def test_a_process_manager_runs_on_it(wrapped: WrappedStore) -> None:
    ledger: Decider[int, int, Deposited] = Decider(
        lambda amount, total: [Deposited(amount=amount)], lambda t, e: t + e.amount, int
    )
    handler = CommandHandler(wrapped, ledger)  # type: ignore[arg-type]
    mirror = ProcessManager(
        "mirror",
        lambda event: [Dispatch(handler, f"mirror-{event.stream}", event.data.amount)],
        stream_prefix="acc-",
    )
    wrapped.append("acc-1", [Deposited(amount=4), Deposited(amount=6)])
    runner = ProjectionRunner(wrapped, mirror.projection)  # type: ignore[arg-type]
    runner.run_once()
    runner.run_once()  # redelivery after a restart: nothing is sent twice
    assert handler.load("mirror-acc-1").state == 10
