"""Many sensors, many readings: one stream per device per day, aggregates in SQL.

* Streams are ``sensor-<device>-<YYYY-MM-DD>``: a stream stays short (one
  day of one device), has one writer (that device's gateway), and old days
  can be archived or deleted as whole streams. See README.md.
* Readings arrive in batches; each batch is one command, so one load and one
  append transaction, and carries an idempotency key so that a gateway that
  re-sends a batch after a timeout does not count it twice.
* The day's state is snapshotted every 100 versions, so checking a batch
  against a long day does not re-read the whole day.
* At day end, ``CloseDay`` records ``DayClosed`` with the day's aggregate:
  "closing the books". Later readings for that day are rejected, and a
  consumer that needs only daily figures reads one event per stream.
* :func:`sensor_stats` is a projection into two SQLite tables in the same
  file as the events, so each batch of rows commits in one transaction with
  the projection's checkpoint: a crash never loses or doubles a reading.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import date, datetime
from itertools import groupby
from typing import Any, assert_never

from eventfold import CommandHandler, Decider, Event, EventStore, RecordedEvent
from eventfold.projections import Projection, ProjectionContext
from eventfold.snapshots import SnapshotPolicy

# -- events and commands --------------------------------------------------------------------


class ReadingRecorded(Event, frozen=True):
    """A sensor measured ``value`` at ``at``."""

    __event_type__ = "iot.ReadingRecorded"
    at: datetime
    value: float


class DayClosed(Event, frozen=True):
    """The books of a device's day are closed, with the day's aggregate."""

    __event_type__ = "iot.DayClosed"
    count: int
    minimum: float
    maximum: float
    mean: float


SensorEvent = ReadingRecorded | DayClosed


@dataclass(frozen=True, slots=True)
class Reading:
    """One measurement as a device sends it."""

    at: datetime
    value: float


@dataclass(frozen=True, slots=True)
class RecordReadings:
    """Store a batch of one device's readings of one day."""

    readings: tuple[Reading, ...]


@dataclass(frozen=True, slots=True)
class CloseDay:
    """Close the books of the day (no more readings for it)."""


SensorCommand = RecordReadings | CloseDay


class SensorError(Exception):
    """A sensor command broke a rule; nothing was written."""


class DayAlreadyClosed(SensorError):
    """Readings arrived for a day whose books are closed."""

    def __init__(self) -> None:
        super().__init__("the day is closed; late readings are not accepted")


class NoReadings(SensorError):
    """A day without readings cannot be closed (its stream does not exist)."""

    def __init__(self) -> None:
        super().__init__("no readings recorded for this day")


# -- the device-day decider -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DayState:
    """Running aggregate of a device's day; small, so snapshots are cheap."""

    count: int = 0
    total: float = 0.0
    minimum: float | None = None
    maximum: float | None = None
    closed: bool = False


def decide(command: SensorCommand, state: DayState) -> list[SensorEvent]:
    """Accept readings while the day is open; close it once."""
    match command:
        case RecordReadings(readings=readings):
            if state.closed:
                raise DayAlreadyClosed
            return [ReadingRecorded(at=r.at, value=r.value) for r in readings]
        case CloseDay():
            if state.closed:
                return []
            if state.count == 0 or state.minimum is None or state.maximum is None:
                raise NoReadings
            return [
                DayClosed(
                    count=state.count,
                    minimum=state.minimum,
                    maximum=state.maximum,
                    mean=state.total / state.count,
                )
            ]
        case _:
            assert_never(command)


def evolve(state: DayState, event: SensorEvent) -> DayState:
    """Fold one event into the day's aggregate."""
    match event:
        case ReadingRecorded(value=value):
            return DayState(
                state.count + 1,
                state.total + value,
                value if state.minimum is None else min(state.minimum, value),
                value if state.maximum is None else max(state.maximum, value),
            )
        case DayClosed():
            return replace(state, closed=True)
        case _:
            assert_never(event)


sensor_day = Decider(decide, evolve, DayState)


def sensor_handler(
    store: EventStore, *, snapshot_every: int = 100
) -> CommandHandler[DayState, SensorCommand]:
    """The command handler for device-day streams, snapshotting long days."""
    return CommandHandler(store, sensor_day, snapshots=SnapshotPolicy(every=snapshot_every))


# -- stream names ---------------------------------------------------------------------------

PREFIX = "sensor-"


def sensor_stream(device: str, day: date) -> str:
    """``sensor-<device>-<YYYY-MM-DD>``."""
    return f"{PREFIX}{device}-{day.isoformat()}"


def parse_stream(stream: str) -> tuple[str, str]:
    """``(device, "YYYY-MM-DD")`` of a sensor stream (devices may contain hyphens)."""
    return stream[len(PREFIX) : -11], stream[-10:]


# -- ingestion ------------------------------------------------------------------------------


def ingest(
    handler: CommandHandler[DayState, SensorCommand],
    device: str,
    readings: Iterable[Reading],
    *,
    batch_id: str,
) -> int:
    """Record one gateway batch of ``device``'s readings; return how many were new.

    A batch that spans midnight is split by day. ``batch_id`` (unique per
    device, e.g. the gateway's sequence number) makes a re-sent batch a no-op.
    """
    written = 0
    for day, same_day in groupby(readings, key=lambda r: r.at.date()):
        result = handler.handle(
            sensor_stream(device, day),
            RecordReadings(tuple(same_day)),
            idempotency_key=f"{batch_id}:{day.isoformat()}",
        )
        written += 0 if result.replayed else len(result.events)
    return written


def close_day(
    handler: CommandHandler[DayState, SensorCommand], device: str, day: date
) -> DayClosed:
    """Close the books of ``device`` for ``day``; return its DayClosed (also when closed before)."""
    stream = sensor_stream(device, day)
    handler.handle(stream, CloseDay())
    last = next(iter(handler.store.read(stream, backwards=True, limit=1)))
    assert isinstance(last.data, DayClosed)
    return last.data


# -- the read model -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stats:
    """Count, minimum, maximum and mean of some readings."""

    count: int
    minimum: float
    maximum: float
    mean: float


_SETUP = (
    """CREATE TABLE IF NOT EXISTS iot_daily (
        device TEXT NOT NULL, day TEXT NOT NULL,
        count INTEGER NOT NULL, total REAL NOT NULL, minimum REAL NOT NULL, maximum REAL NOT NULL,
        closed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (device, day))""",
    """CREATE TABLE IF NOT EXISTS iot_recent (
        device TEXT NOT NULL, position INTEGER NOT NULL, value REAL NOT NULL,
        PRIMARY KEY (device, position))""",
)
_ADD_READING = """
    INSERT INTO iot_daily (device, day, count, total, minimum, maximum) VALUES (?, ?, 1, ?, ?, ?)
    ON CONFLICT (device, day) DO UPDATE SET
        count = count + 1, total = total + excluded.total,
        minimum = min(minimum, excluded.minimum), maximum = max(maximum, excluded.maximum)"""
_ADD_RECENT = "INSERT INTO iot_recent (device, position, value) VALUES (?, ?, ?)"
# Keep the newest ``window`` readings per device: older rows are dropped as new ones come.
_TRIM_RECENT = """
    DELETE FROM iot_recent WHERE device = ? AND position <= (
        SELECT position FROM iot_recent WHERE device = ?
        ORDER BY position DESC LIMIT 1 OFFSET ?)"""
_CLOSE = "UPDATE iot_daily SET closed = 1 WHERE device = ? AND day = ?"


def _connection(ctx: ProjectionContext) -> sqlite3.Connection:
    if not isinstance(ctx.connection, sqlite3.Connection):
        # The point of this read model is sharing the events' transaction.
        raise TypeError("sensor_stats needs a SqliteEventStore")
    return ctx.connection


def sensor_stats(*, window: int = 10, name: str = "iot-sensor-stats") -> Projection:
    """Per device and day: count/min/max/total; per device: the last ``window`` readings.

    Declared as data; run it with ``ProjectionRunner(store, sensor_stats())``
    on a :class:`~eventfold.SqliteEventStore`.
    """

    def setup(ctx: ProjectionContext) -> None:
        conn = _connection(ctx)
        for statement in _SETUP:
            conn.execute(statement)

    def teardown(ctx: ProjectionContext) -> None:
        conn = _connection(ctx)
        conn.execute("DROP TABLE IF EXISTS iot_daily")
        conn.execute("DROP TABLE IF EXISTS iot_recent")

    def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
        conn = _connection(ctx)
        device, day = parse_stream(event.stream)
        match event.data:
            case ReadingRecorded(value=value):
                conn.execute(_ADD_READING, (device, day, value, value, value))
                conn.execute(_ADD_RECENT, (device, event.position, value))
                conn.execute(_TRIM_RECENT, (device, device, window))
            case DayClosed():
                conn.execute(_CLOSE, (device, day))

    return Projection(
        name,
        handle,
        types=[ReadingRecorded.__event_type__, DayClosed.__event_type__],
        stream_prefix=PREFIX,
        setup=setup,
        teardown=teardown,
    )


def _read(path: str, sql: str) -> list[Any]:
    # A reader's own connection: the read model is plain SQL, any client can query it.
    with closing(sqlite3.connect(path)) as conn:
        rows: list[Any] = conn.execute(sql).fetchall()
    return rows


def daily_stats(path: str) -> dict[tuple[str, str], tuple[Stats, bool]]:
    """``{(device, day): (stats, closed)}`` from the read model in the SQLite file ``path``."""
    rows = _read(path, "SELECT device, day, count, minimum, maximum, total, closed FROM iot_daily")
    return {
        (device, day): (Stats(count, low, high, total / count), bool(closed))
        for device, day, count, low, high, total, closed in rows
    }


def recent_stats(path: str) -> dict[str, Stats]:
    """``{device: stats of its last readings}`` from the read model in ``path``."""
    rows = _read(
        path,
        "SELECT device, count(*), min(value), max(value), avg(value) FROM iot_recent "
        "GROUP BY device",
    )
    return {device: Stats(count, low, high, mean) for device, count, low, high, mean in rows}


def readings_of(events: Iterable[RecordedEvent]) -> Iterator[tuple[str, str, float]]:
    """``(device, day, value)`` of each reading among ``events`` (for checks and tools)."""
    for event in events:
        if isinstance(event.data, ReadingRecorded):
            device, day = parse_stream(event.stream)
            yield device, day, event.data.value
