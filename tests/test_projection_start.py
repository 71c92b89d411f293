"""Where a new projection starts: ``Projection(start_from=...)`` on every backend."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from eventfold import InvalidRequest, RecordedEvent
from eventfold.projections import Projection, ProjectionRunner
from eventfold.store import EventStore
from eventfold.testing._events import Deposited

KINDS = [{}, {"external": True}, {"in_memory": True}]
KIND_IDS = ["sql-or-stored", "external", "in-memory"]


def history(store: EventStore, count: int) -> list[int]:
    return [store.append(f"acc-{i % 2}", [Deposited(amount=i)]).position for i in range(count)]


def runner_for(store: EventStore, seen: list[RecordedEvent], **options: Any) -> ProjectionRunner:
    return ProjectionRunner(store, Projection("notifier", lambda ctx, e: seen.append(e), **options))


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_a_projection_that_starts_now_handles_only_what_comes_after(
    any_store: EventStore, kind: dict[str, bool]
) -> None:
    history(any_store, 3)
    seen: list[RecordedEvent] = []
    runner = runner_for(any_store, seen, start_from="now", **kind)
    assert runner.run_once() == 0  # the past is not its business
    assert runner.position == any_store.last_position()
    later = history(any_store, 2)
    assert runner.run_once() == 2
    assert [e.position for e in seen] == later
    # A second runner of the stored projection (another process) goes on from there.
    if not kind.get("in_memory"):
        runner.release()
        more = history(any_store, 1)
        again: list[RecordedEvent] = []
        assert runner_for(any_store, again, start_from="now", **kind).run_once() == 1
        assert [e.position for e in again] == more


def test_a_projection_can_start_after_a_position_or_at_a_time(any_store: EventStore) -> None:
    positions = history(any_store, 6)
    seen: list[RecordedEvent] = []
    assert runner_for(any_store, seen, start_from=positions[2]).run_once() == 3
    assert [e.position for e in seen] == positions[3:]
    log = list(any_store.read_all())
    since = log[3].recorded_at
    first = next(i for i, e in enumerate(log) if e.recorded_at >= since)
    timed: list[RecordedEvent] = []
    runner = ProjectionRunner(
        any_store, Projection("since", lambda ctx, e: timed.append(e), start_from=since)
    )
    runner.run_once()
    assert [e.position for e in timed] == [e.position for e in log[first:]]
    future: list[RecordedEvent] = []
    tomorrow = datetime(2999, 1, 1, tzinfo=UTC)
    runner = ProjectionRunner(
        any_store, Projection("future", lambda ctx, e: future.append(e), start_from=tomorrow)
    )
    assert runner.run_once() == 0  # nothing recorded since: it starts at the end
    assert [e.position for e in future] == []


def test_a_reset_replays_from_the_beginning_whatever_the_start(any_store: EventStore) -> None:
    positions = history(any_store, 3)
    seen: list[RecordedEvent] = []
    runner = runner_for(any_store, seen, start_from="now")
    assert runner.run_once() == 0
    assert runner.rebuild() == 3  # asked for: the whole log
    assert [e.position for e in seen] == positions


@pytest.mark.parametrize(
    "start",
    ["later", "", 1.5, -1, True, None, datetime(2026, 1, 1)],
    ids=["word", "empty", "float", "negative", "bool", "none", "naive-datetime"],
)
def test_a_bad_start_is_refused_when_the_projection_is_declared(start: object) -> None:
    with pytest.raises(InvalidRequest, match="start_from"):
        Projection("p", lambda ctx, e: None, start_from=start)  # type: ignore[arg-type]
