"""OpenTelemetry: spans and metrics through the SDK's in-memory exporters, trace context.

The SDK's providers are global and set once per process: this module sets
them for its tests and takes them away again after them (as OpenTelemetry's
own test utilities do), so no other test runs with telemetry recording and
its metadata (a ``traceparent``) in the events.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from eventfold import (
    AsyncCommandHandler,
    AsyncMemoryEventStore,
    CommandHandler,
    Decider,
    RecordedEvent,
    telemetry,
)
from eventfold.processes import Dispatch, ProcessManager
from eventfold.projections import SKIP, Projection, ProjectionContext, ProjectionRunner
from eventfold.store import EventStore
from eventfold.testing._events import Deposited, Greet, welcome

EXPORTER = InMemorySpanExporter()
READER = InMemoryMetricReader()


@pytest.fixture(scope="module", autouse=True)
def sdk() -> Iterator[None]:
    assert not telemetry.active()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    meters = MeterProvider(metric_readers=[READER])
    metrics.set_meter_provider(meters)
    yield
    # No public API unsets a global provider: reset what set_*_provider set once.
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    metrics_internal._METER_PROVIDER = None  # type: ignore[attr-defined]
    metrics_internal._METER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    telemetry._instruments.clear()  # made by the meter provider just taken away
    provider.shutdown()
    meters.shutdown()
    assert not telemetry.active()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER


@pytest.fixture
def store(any_store: EventStore) -> EventStore:
    return any_store


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def metric_points(name: str) -> list[Any]:
    data = READER.get_metrics_data()
    points = []
    for resource in data.resource_metrics if data is not None else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    points.extend(metric.data.data_points)
    return points


@dataclass(frozen=True)
class Deposit:
    amount: int


account = Decider(
    lambda command, balance: [Deposited(amount=command.amount)],
    lambda balance, event: balance + event.amount,
    int,
)


def test_a_command_is_a_span_with_load_decide_and_append_and_its_events_carry_it(
    store: EventStore, spans: InMemorySpanExporter
) -> None:
    result = CommandHandler(store, account).handle("acc-1", Deposit(5))
    (handle,) = named(spans, "eventfold.handle")
    assert handle.attributes is not None
    assert handle.attributes["eventfold.stream"] == "acc-1"
    assert handle.attributes["eventfold.position"] == result.position
    assert handle.attributes["eventfold.version"] == 1
    children = {s.name for s in spans.get_finished_spans() if s.parent == handle.context}
    assert {"eventfold.load", "eventfold.decide", "eventfold.append"} <= children
    (append,) = named(spans, "eventfold.append")
    assert (
        append.attributes is not None and append.attributes["messaging.destination.name"] == "acc-1"
    )
    # The event carries the command's trace context.
    (event,) = list(store.read("acc-1"))
    trace_id = format(handle.context.trace_id, "032x")
    span_id = format(handle.context.span_id, "016x")
    assert event.metadata[telemetry.TRACEPARENT].split("-")[1:3] == [trace_id, span_id]


def test_one_trace_follows_a_saga_from_a_command_to_the_commands_its_reaction_sends(
    store: EventStore, spans: InMemorySpanExporter
) -> None:
    deposits = CommandHandler(store, account)
    greetings = CommandHandler(store, welcome)

    def react(event: RecordedEvent) -> list[Dispatch]:
        return [Dispatch(greetings, f"welcome-{event.stream}", Greet("hello"))]

    manager = ProcessManager("greeter", react, types=[Deposited.__event_type__])
    deposits.handle("acc-2", Deposit(1))
    (first,) = named(spans, "eventfold.handle")
    spans.clear()
    # The runner runs outside any span: the trace comes from the event's metadata.
    assert ProjectionRunner(store, manager.projection).run_once() == 1
    (reaction,) = named(spans, "eventfold.process")
    assert reaction.context.trace_id == first.context.trace_id
    assert reaction.parent is not None and reaction.parent.span_id == first.context.span_id
    assert (
        reaction.attributes is not None and reaction.attributes["eventfold.projection"] == "greeter"
    )
    (sent,) = named(spans, "eventfold.handle")
    assert sent.parent is not None and sent.parent.span_id == reaction.context.span_id
    (greeted,) = list(store.read("welcome-acc-2"))
    assert greeted.metadata[telemetry.TRACEPARENT].split("-")[1] == format(
        first.context.trace_id, "032x"
    )


def test_retries_conflicts_and_dead_letters_are_counted(
    store: EventStore, spans: InMemorySpanExporter
) -> None:
    handler = CommandHandler(store, account)
    raced = [False]

    def decide(command: Deposit, balance: int) -> list[Deposited]:
        if not raced[0]:
            raced[0] = True
            store.append("acc-3", [Deposited(amount=100)])  # another writer got there first
        return [Deposited(amount=command.amount)]

    retries_before = sum(p.value for p in metric_points("eventfold.command.retries"))
    conflicts_before = sum(p.value for p in metric_points("eventfold.append.conflicts"))
    CommandHandler(store, Decider(decide, account.evolve, int)).handle("acc-3", Deposit(1))
    assert sum(p.value for p in metric_points("eventfold.command.retries")) == retries_before + 1
    assert sum(p.value for p in metric_points("eventfold.append.conflicts")) == conflicts_before + 1
    (handle,) = named(spans, "eventfold.handle")
    assert [e.name for e in handle.events] == ["eventfold.retry"]
    del handler

    def fails(ctx: ProjectionContext, event: RecordedEvent) -> None:
        raise ValueError("poison")

    letters_before = sum(p.value for p in metric_points("eventfold.projection.dead_letters"))
    runner = ProjectionRunner(store, Projection("poisoned", fails, on_error=SKIP))
    assert runner.run_once() == 2
    letters = sum(p.value for p in metric_points("eventfold.projection.dead_letters"))
    assert letters == letters_before + 2
    batches = metric_points("eventfold.projection.batch.duration")
    assert batches and all(p.count > 0 for p in batches)
    assert metric_points("eventfold.append.duration")
    assert metric_points("eventfold.projection.lag")


def test_projection_batches_are_spans_linking_their_events(
    store: EventStore, spans: InMemorySpanExporter
) -> None:
    handler = CommandHandler(store, account)
    for n in range(3):
        handler.handle(f"acc-{n}", Deposit(n))
    spans.clear()

    def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
        return None

    for in_memory in (False, True):
        name = f"linked-{in_memory}"
        assert (
            ProjectionRunner(store, Projection(name, handle, in_memory=in_memory)).run_once() == 3
        )
        batches = [
            s
            for s in named(spans, "eventfold.projection.batch")
            if s.attributes is not None and s.attributes["eventfold.projection"] == name
        ]
        # One batch (one per event where nothing rolls back), linking its events' commands.
        assert batches and sum(len(batch.links) for batch in batches) == 3


@pytest.mark.parametrize(
    "setup",
    [
        "import sys; sys.modules['opentelemetry'] = None",  # the extra is not installed
        "pass",  # installed, but no SDK configured
    ],
)
def test_without_the_api_or_an_sdk_nothing_is_recorded_and_everything_works(setup: str) -> None:
    code = f"""{setup}
from dataclasses import dataclass
from eventfold import CommandHandler, Decider, MemoryEventStore, telemetry
from eventfold.testing._events import Deposited

@dataclass(frozen=True)
class Deposit:
    amount: int

store = MemoryEventStore()
decider = Decider(lambda c, s: [Deposited(amount=c.amount)], lambda s, e: s, int)
handler = CommandHandler(store, decider)
handler.handle("a", Deposit(1))
(event,) = list(store.read("a"))
assert telemetry.TRACEPARENT not in event.metadata, event.metadata
assert not telemetry.active()
print("ok")
"""
    command = [sys.executable, "-c", code]
    out = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.asyncio
async def test_the_async_flavour_records_the_same_spans(spans: InMemorySpanExporter) -> None:
    store = AsyncMemoryEventStore()
    result = await AsyncCommandHandler(store, account).handle("acc-9", Deposit(2))
    (handle,) = named(spans, "eventfold.handle")
    children = {s.name for s in spans.get_finished_spans() if s.parent == handle.context}
    assert {"eventfold.load", "eventfold.decide", "eventfold.append"} <= children
    assert (
        handle.attributes is not None and handle.attributes["eventfold.position"] == result.position
    )
    (event,) = [e async for e in store.read("acc-9")]
    assert event.metadata[telemetry.TRACEPARENT].split("-")[1] == format(
        handle.context.trace_id, "032x"
    )


def test_the_lag_in_events_is_a_gauge_counted_while_catching_up_and_zero_once_caught_up(
    store: EventStore,
) -> None:
    for n in range(6):
        store.append(f"lagging-{n}", [Deposited(amount=n)])
    seen: list[list[int]] = []
    name = f"lagging-{uuid.uuid4().hex[:8]}"  # a gauge keeps its value: one name per test

    def lag_events() -> list[int]:
        return [
            p.value
            for p in metric_points("eventfold.projection.lag.events")
            if p.attributes["eventfold.projection"] == name
        ]

    def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
        seen.append(lag_events())

    runner = ProjectionRunner(store, Projection(name, handle, batch_size=2))
    assert runner.run_once() == 6
    # Counted after the first page (4 to go), then not again within the second...
    assert seen[0] == [] and seen[2] == [4] and seen[5] == [4]
    # ...and at the end of the run, because it lagged: caught up.
    assert lag_events() == [0]
