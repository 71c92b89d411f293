"""Sensor ingestion and the aggregate read model, checked against the raw readings.

20 devices send 200 readings each over two days, in gateway batches of 30
(one batch per device spans midnight). The read model must equal what a
direct computation over the generated readings gives, also after the
projection is killed in the middle of a batch or run by two workers in turn.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from statistics import fmean

import pytest

from eventfold import RecordedEvent, SqliteEventStore
from eventfold.projections import ProjectionContext, ProjectionRunner
from examples.iot.sensors import (
    CloseDay,
    DayAlreadyClosed,
    DayClosed,
    DayState,
    NoReadings,
    Reading,
    ReadingRecorded,
    RecordReadings,
    close_day,
    daily_stats,
    decide,
    ingest,
    parse_stream,
    readings_of,
    recent_stats,
    sensor_day,
    sensor_handler,
    sensor_stats,
    sensor_stream,
)

DEVICES = [f"dev-{n:02d}" for n in range(20)]  # hyphenated on purpose: names are parsed
PER_DEVICE, BATCH, WINDOW = 200, 30, 10
START = datetime(2026, 3, 1, tzinfo=UTC)
STEP = timedelta(seconds=864)  # 100 readings a day
DAY1, DAY2 = date(2026, 3, 1), date(2026, 3, 2)
READING = ReadingRecorded.__event_type__
OWNER = "iot-worker"  # a restarted worker keeps its name, so it takes its lease back


def generate() -> dict[str, list[Reading]]:
    """Deterministic readings: a per-device baseline plus noise."""
    rng = random.Random(20260301)
    return {
        device: [
            Reading(START + i * STEP, round(15 + n + rng.gauss(0, 4), 2)) for i in range(PER_DEVICE)
        ]
        for n, device in enumerate(DEVICES)
    }


READINGS = generate()


def send(store: SqliteEventStore, batches: range) -> None:
    """Each device's gateway sends batches in turn, devices interleaved as in real life."""
    handler = sensor_handler(store)
    for b in batches:
        for device, readings in READINGS.items():
            ingest(handler, device, readings[b * BATCH : (b + 1) * BATCH], batch_id=f"b{b}")


BATCHES = range(-(-PER_DEVICE // BATCH))  # 7 batches, the last one short


def expected_daily() -> dict[tuple[str, str], tuple[int, float, float, float]]:
    """``{(device, day): (count, min, max, mean)}`` computed straight from READINGS."""
    result = {}
    for device, readings in READINGS.items():
        for day in (DAY1, DAY2):
            values = [r.value for r in readings if r.at.date() == day]
            result[device, day.isoformat()] = (len(values), min(values), max(values), fmean(values))
    return result


def assert_matches_readings(path: str, closed: frozenset[tuple[str, str]] = frozenset()) -> None:
    """Both tables of the read model in ``path`` agree with READINGS."""
    table = daily_stats(path)
    expected = expected_daily()
    assert table.keys() == expected.keys()
    for key, (count, low, high, mean) in expected.items():
        stats, is_closed = table[key]
        assert (stats.count, stats.minimum, stats.maximum) == (count, low, high), key
        assert stats.mean == pytest.approx(mean, rel=1e-12), key
        assert is_closed == (key in closed), key
    recent = recent_stats(path)
    assert recent.keys() == set(DEVICES)
    for device, readings in READINGS.items():
        last = [r.value for r in readings[-WINDOW:]]
        stats = recent[device]
        assert (stats.count, stats.minimum, stats.maximum) == (WINDOW, min(last), max(last))
        assert stats.mean == pytest.approx(fmean(last), rel=1e-12)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteEventStore]:
    """Every reading ingested. ``durability="normal"``: in WAL mode a crash of the
    process loses nothing; only a power cut may lose the last commits, which a
    gateway re-sends (batches are idempotent)."""
    with SqliteEventStore(tmp_path / "sensors.db", durability="normal") as opened:
        send(opened, BATCHES)
        yield opened


# -- the device-day model alone -----------------------------------------------------------------


def test_day_rules() -> None:
    at = START
    state = sensor_day.fold(
        decide(RecordReadings((Reading(at, 2.5), Reading(at, -1.0))), DayState())
    )
    assert state == DayState(2, 1.5, -1.0, 2.5)
    [closing] = decide(CloseDay(), state)
    assert closing == DayClosed(count=2, minimum=-1.0, maximum=2.5, mean=0.75)
    closed = sensor_day.evolve(state, closing)
    assert decide(CloseDay(), closed) == []  # closing twice changes nothing
    with pytest.raises(DayAlreadyClosed):
        decide(RecordReadings((Reading(at, 1.0),)), closed)
    with pytest.raises(NoReadings):
        decide(CloseDay(), DayState())
    assert parse_stream(sensor_stream("hall-3-north", DAY2)) == ("hall-3-north", "2026-03-02")


# -- ingestion ------------------------------------------------------------------------------------


def test_ingestion_writes_day_streams_with_snapshots(store: SqliteEventStore) -> None:
    total = sum(1 for _ in readings_of(store.read_all()))
    assert total == len(DEVICES) * PER_DEVICE
    for device in DEVICES:
        for day in (DAY1, DAY2):
            info = store.get_stream(sensor_stream(device, day))
            assert info is not None and info.version == 100
    # The batch that spans midnight was split; each day's stream holds only its day.
    stream = sensor_stream("dev-07", DAY1)
    assert {e.data.at.date() for e in store.read(stream)} == {DAY1}
    # Long days load from a snapshot, which agrees with folding every event.
    snapshot = store.load_snapshot(stream)
    assert snapshot is not None and snapshot.version == 100
    handler = sensor_handler(store)
    assert handler.load(stream).state == sensor_day.fold(e.data for e in store.read(stream))


def test_a_resent_batch_is_not_counted_twice(store: SqliteEventStore) -> None:
    handler = sensor_handler(store)
    position = store.last_position()
    again = READINGS["dev-03"][3 * BATCH : 4 * BATCH]  # spans midnight: two day streams
    assert ingest(handler, "dev-03", again, batch_id="b3") == 0
    assert store.last_position() == position
    late = Reading(START + 199 * STEP + timedelta(seconds=1), 99.0)
    assert ingest(handler, "dev-03", [late], batch_id="b7") == 1


# -- the read model ---------------------------------------------------------------------------


def test_projection_matches_the_readings(store: SqliteEventStore) -> None:
    runner = ProjectionRunner(store, sensor_stats(window=WINDOW), owner=OWNER)
    assert runner.run_once() == len(DEVICES) * PER_DEVICE
    assert_matches_readings(store.path)
    assert runner.status().lag_events == 0


def test_closing_the_books(store: SqliteEventStore) -> None:
    handler = sensor_handler(store)
    expected = expected_daily()
    for device in DEVICES:
        closing = close_day(handler, device, DAY1)
        count, low, high, mean = expected[device, DAY1.isoformat()]
        assert (closing.count, closing.minimum, closing.maximum) == (count, low, high)
        assert closing.mean == pytest.approx(mean, rel=1e-12)
        assert close_day(handler, device, DAY1) == closing  # once only
    with pytest.raises(DayAlreadyClosed):
        ingest(handler, "dev-00", [Reading(START + timedelta(hours=23), 1.0)], batch_id="late")

    ProjectionRunner(store, sensor_stats(window=WINDOW), owner=OWNER).run_once()

    assert_matches_readings(store.path, closed=frozenset((d, DAY1.isoformat()) for d in DEVICES))
    assert store.get_stream(sensor_stream("dev-00", DAY1)).version == 101  # type: ignore[union-attr]


class Killed(BaseException):
    """The process died: not an error any handler or policy gets to see."""


def test_killed_in_the_middle_of_a_batch_resumes_without_loss_or_double_count(
    store: SqliteEventStore,
) -> None:
    projection = sensor_stats(window=WINDOW)
    handled = 0

    def dies_at_the_1234th_event(ctx: ProjectionContext, event: RecordedEvent) -> None:
        nonlocal handled
        handled += 1
        if handled == 1234:  # in the third batch of 500
            raise Killed
        projection.handle(ctx, event)

    doomed = dataclasses.replace(projection, handle=dies_at_the_1234th_event)
    with pytest.raises(Killed):
        ProjectionRunner(store, doomed, owner=OWNER).run_once()

    with SqliteEventStore(store.path) as restarted:  # a new process on the same file
        runner = ProjectionRunner(restarted, sensor_stats(window=WINDOW), owner=OWNER)
        # The interrupted batch rolled back together with its checkpoint advance:
        # the rows count exactly the readings up to the checkpoint.
        checkpoint = runner.position
        counted = sum(stats.count for stats, _ in daily_stats(store.path).values())
        assert counted == 1000  # two whole batches
        assert counted == sum(
            1 for e in store.read_all() if e.position <= checkpoint and e.type == READING
        )
        assert runner.run_once() == len(DEVICES) * PER_DEVICE - counted
    assert_matches_readings(store.path)


def test_two_runs_in_turn_build_the_same_table_as_one(tmp_path: Path) -> None:
    path = tmp_path / "halves.db"
    with SqliteEventStore(path, durability="normal") as first:
        send(first, BATCHES[:4])
        assert ProjectionRunner(first, sensor_stats(window=WINDOW), owner=OWNER).run_once() == (
            len(DEVICES) * 4 * BATCH
        )
    with SqliteEventStore(path, durability="normal") as second:  # the process restarted
        send(second, BATCHES[4:])
        runner = ProjectionRunner(second, sensor_stats(window=WINDOW), owner=OWNER)
        assert runner.run_once() == len(DEVICES) * (PER_DEVICE - 4 * BATCH)  # the rest only
        assert_matches_readings(second.path)
        in_two_runs = daily_stats(second.path), recent_stats(second.path)
        runner.rebuild()  # drop the tables, replay everything in one run
        assert (daily_stats(second.path), recent_stats(second.path)) == in_two_runs
