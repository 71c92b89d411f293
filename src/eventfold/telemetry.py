"""OpenTelemetry: spans, metrics and trace context in event metadata (``eventfold[otel]``).

Nothing to call: with ``opentelemetry-api`` installed (``pip install
'eventfold[otel]'``) and an SDK configured by the application (a tracer or
meter provider set), eventfold reports

* spans: ``eventfold.handle`` (a command, with ``eventfold.load``,
  ``eventfold.decide`` and the append as children, its retries counted),
  ``eventfold.append``, ``eventfold.read``, ``eventfold.projection.batch``
  (a SQL batch, a page in memory, an external projection's event) and
  ``eventfold.process`` (a process manager's reaction to one event), with
  the stream, type, version and position attributes below;
* metrics: ``eventfold.append.duration`` and ``eventfold.projection.batch.duration``
  (histograms, seconds), ``eventfold.append.conflicts``,
  ``eventfold.command.retries`` and ``eventfold.projection.dead_letters``
  (counters), ``eventfold.projection.lag`` (a histogram of how old, in seconds,
  the last event of each batch was when it was handled) and
  ``eventfold.projection.lag.events`` (a gauge: how many events of the log
  are after the projection's position, counted at most once a second while
  it runs, and when it has caught up);
* trace context: a command's events carry the W3C ``traceparent`` (and
  ``tracestate``) of its span in their metadata, and a projection or process
  manager handling them continues that trace, so one trace follows a saga
  across processes (an event, then the commands its reaction sends).

Without the package, or without an SDK, all of this costs one check per
operation and records nothing. Attribute names follow the semantic
conventions where they fit: ``db.system.name``, ``db.operation.name``,
``messaging.destination.name`` (the stream), ``messaging.batch.message_count``;
eventfold's own are ``eventfold.stream``, ``eventfold.version``,
``eventfold.position``, ``eventfold.projection``, ``eventfold.event.type``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any

__all__ = ["TRACEPARENT", "TRACESTATE", "active", "enabled"]

#: The metadata keys that carry an event's trace context (W3C Trace Context).
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_NOTHING: AbstractContextManager[Any] = nullcontext(None)
_UNSET = object()
_instruments: dict[str, Any] = {}
#: At most this many events of a batch are linked from its span.
MAX_LINKS = 32
#: The OpenTelemetry API, imported on first use: (trace, metrics, context, propagator).
_api: list[Any] = []


def _load() -> bool:
    """Import the API once (lazily: eventfold's import never pays for it)."""
    if not _api:
        try:
            from opentelemetry import context, metrics, trace  # noqa: PLC0415
            from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
                TraceContextTextMapPropagator,
            )
        except ImportError:  # the extra is not installed: everything here does nothing
            _api.append(None)
        else:
            import os  # noqa: PLC0415

            from opentelemetry.metrics import _internal as metrics_internal  # noqa: PLC0415

            # Providers named by the environment are loaded by the API's getters.
            from_environment = any(
                name in os.environ
                for name in ("OTEL_PYTHON_TRACER_PROVIDER", "OTEL_PYTHON_METER_PROVIDER")
            )
            _api.extend(
                [trace, metrics, context, TraceContextTextMapPropagator(), metrics_internal]
            )
            _api.append(from_environment)
    return _api[0] is not None


def enabled() -> bool:
    """Whether spans are recorded: the API is installed and an SDK provider is set."""
    if not _load() or (getattr(_api[0], "_TRACER_PROVIDER", _UNSET) is None and not _api[5]):
        return False
    trace = _api[0]
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def active() -> bool:
    """Whether anything is recorded (spans or metrics): else callers take their fast path.

    Cheap when nothing is configured (the common case on the hot path): the
    API's getters look at the environment on every call until a provider is
    set, so its globals are looked at first (with the getters as the fallback).
    """
    if not _load():
        return False
    if (
        getattr(_api[0], "_TRACER_PROVIDER", _UNSET) is None
        and getattr(_api[4], "_METER_PROVIDER", _UNSET) is None
        and not _api[5]
    ):
        return False  # no provider set, none named by the environment
    return enabled() or _measuring()


def _measuring() -> bool:
    if not _load() or (getattr(_api[4], "_METER_PROVIDER", _UNSET) is None and not _api[5]):
        return False
    provider = _api[1].get_meter_provider()
    return type(provider).__name__ not in ("_ProxyMeterProvider", "NoOpMeterProvider")


def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    parent: Mapping[str, Any] | None = None,
    links: Sequence[Any] = (),
    kind: str = "internal",
) -> AbstractContextManager[Any]:
    """A span around a block (the current one inside it), or nothing when off.

    ``parent``: event metadata whose trace context the span continues (when
    there is no current span); ``links``: recorded events (their metadata)
    the span links to, the first MAX_LINKS of them.
    """
    if not enabled():
        return _NOTHING
    _trace = _api[0]
    tracer = _trace.get_tracer("eventfold")
    kinds = {
        "internal": _trace.SpanKind.INTERNAL,
        "producer": _trace.SpanKind.PRODUCER,
        "consumer": _trace.SpanKind.CONSUMER,
        "client": _trace.SpanKind.CLIENT,
    }
    parent_context = None
    if parent is not None and not _trace.get_current_span().get_span_context().is_valid:
        parent_context = _extract(parent)
    span_links = []
    for event in links[:MAX_LINKS]:
        linked = _trace.get_current_span(_extract(event.metadata)).get_span_context()
        if linked.is_valid:
            span_links.append(_trace.Link(linked))
    current: AbstractContextManager[Any] = tracer.start_as_current_span(
        name,
        context=parent_context,
        kind=kinds[kind],
        attributes=dict(attributes or {}),
        links=span_links,
    )
    return current


def start(name: str, attributes: Mapping[str, Any]) -> Any:
    """A span that is not made current (a read iterated across awaits); None when off.

    End it with :func:`end`.
    """
    if not enabled():
        return None
    return (
        _api[0]
        .get_tracer("eventfold")
        .start_span(name, kind=_api[0].SpanKind.CLIENT, attributes=dict(attributes))
    )


def end(current: Any, attributes: Mapping[str, Any], error: BaseException | None = None) -> None:
    """End a span of :func:`start` with more attributes (and the error that ended it)."""
    if current is None:
        return
    current.set_attributes(dict(attributes))
    if error is not None:
        current.record_exception(error)
        current.set_status(_api[0].Status(_api[0].StatusCode.ERROR, str(error)))
    current.end()


@contextmanager
def _timed(instrument: str, attributes: Mapping[str, Any]) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        record(instrument, time.perf_counter() - start, attributes)


def batch(
    name: str,
    attributes: Mapping[str, Any],
    projection: str,
    *,
    links: Sequence[Any] = (),
    parent: Mapping[str, Any] | None = None,
    kind: str = "internal",
) -> AbstractContextManager[Any]:
    """A projection's unit of work: a :func:`span` (the value of the block) timed in
    ``eventfold.projection.batch.duration``; nothing when off."""
    if not active():
        return _NOTHING
    return _batch(name, attributes, projection, links, parent, kind)


@contextmanager
def _batch(
    name: str,
    attributes: Mapping[str, Any],
    projection: str,
    links: Sequence[Any],
    parent: Mapping[str, Any] | None,
    kind: str,
) -> Iterator[Any]:
    duration = {"eventfold.projection": projection}
    with (
        span(name, attributes, links=links, parent=parent, kind=kind) as current,
        timed("eventfold.projection.batch.duration", duration),
    ):
        yield current


def timed(instrument: str, attributes: Mapping[str, Any]) -> AbstractContextManager[Any]:
    """Record how long the block took in the histogram ``instrument`` (when measuring)."""
    if not _measuring():
        return _NOTHING
    return _timed(instrument, attributes)


_HISTOGRAMS = {
    "eventfold.append.duration": "s",
    "eventfold.projection.batch.duration": "s",
    "eventfold.projection.lag": "s",
}
_GAUGES = {"eventfold.projection.lag.events": "{event}"}
_COUNTERS = {
    "eventfold.append.conflicts": "{conflict}",
    "eventfold.command.retries": "{retry}",
    "eventfold.projection.dead_letters": "{event}",
}


def _instrument(name: str) -> Any:
    found = _instruments.get(name)
    if found is None:
        meter = _api[1].get_meter("eventfold")
        if name in _HISTOGRAMS:
            found = meter.create_histogram(name, unit=_HISTOGRAMS[name])
        elif name in _GAUGES:
            found = meter.create_gauge(name, unit=_GAUGES[name])
        else:
            found = meter.create_counter(name, unit=_COUNTERS[name])
        _instruments[name] = found
    return found


def record(instrument: str, value: float, attributes: Mapping[str, Any]) -> None:
    """Record ``value`` in a histogram or gauge, or add it to a counter (when measuring)."""
    if not _measuring():
        return
    metric = _instrument(instrument)
    if instrument in _HISTOGRAMS:
        metric.record(value, attributes=dict(attributes))
    elif instrument in _GAUGES:
        metric.set(value, attributes=dict(attributes))
    else:
        metric.add(value, attributes=dict(attributes))


def lag(projection: str, recorded_at: datetime) -> None:
    """Record how old an event was when ``projection`` handled it."""
    if _measuring():
        age = (datetime.now(UTC) - recorded_at).total_seconds()
        record("eventfold.projection.lag", max(age, 0.0), {"eventfold.projection": projection})


def measuring() -> bool:
    """Whether metrics are recorded (a meter provider is set): worth counting for."""
    return _measuring()


def inject(metadata: MutableMapping[str, Any]) -> None:
    """Put the current span's trace context into ``metadata`` (when tracing)."""
    if enabled() and _api[0].get_current_span().get_span_context().is_valid:
        _api[3].inject(metadata)


def _extract(metadata: Mapping[str, Any]) -> Any:
    carrier = {key: metadata[key] for key in (TRACEPARENT, TRACESTATE) if key in metadata}
    return _api[3].extract(carrier, context=_api[2].Context())


def set_attributes(current: Any, attributes: Mapping[str, Any]) -> None:
    """Add attributes to ``current`` (the value a :func:`span` block gave; None when off)."""
    if current is not None:
        current.set_attributes(dict(attributes))


def add_event(current: Any, name: str, attributes: Mapping[str, Any]) -> None:
    """Add an event (a conflict, a retry) to ``current`` (None when off)."""
    if current is not None:
        current.add_event(name, dict(attributes))
