"""Side effects that do not repeat: ``ctx.replaying`` and the external-projection guard."""

from __future__ import annotations

from typing import Any

import pytest

from eventfold import InvalidRequest
from eventfold.projections import Projection, ProjectionContext, ProjectionRunner
from eventfold.store import EventStore
from eventfold.testing._events import Deposited

KINDS = [{}, {"external": True}, {"in_memory": True}]
KIND_IDS = ["stored", "external", "in-memory"]


def deposits(store: EventStore, count: int) -> list[int]:
    return [store.append(f"acc-{i % 2}", [Deposited(amount=i)]).position for i in range(count)]


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_a_rebuild_marks_the_events_handled_before_as_replaying(
    any_store: EventStore, kind: dict[str, bool]
) -> None:
    seen: list[tuple[int, bool]] = []

    def handle(ctx: ProjectionContext, event: Any) -> None:
        seen.append((event.position, ctx.replaying))

    runner = ProjectionRunner(any_store, Projection("mailer", handle, **kind))
    before = deposits(any_store, 3)
    assert runner.run_once() == 3
    assert seen == [(p, False) for p in before]  # live: effects run
    seen.clear()
    assert runner.rebuild(replay_effects=True) == 3
    assert seen == [(p, True) for p in before]  # handled before the reset: a replay
    seen.clear()
    after = deposits(any_store, 2)
    assert runner.run_once() == 2
    assert seen == [(p, False) for p in after]


def test_an_external_projection_is_not_reset_unless_its_effects_may_repeat(
    any_store: EventStore,
) -> None:
    mailed: list[int] = []
    runner = ProjectionRunner(
        any_store,
        Projection("mailer", lambda ctx, e: mailed.append(e.position), external=True),
    )
    positions = deposits(any_store, 2)
    runner.run_once()
    with pytest.raises(InvalidRequest, match="replay_effects=True"):
        runner.rebuild()
    with pytest.raises(InvalidRequest, match="replay_effects=True"):
        runner.reset()
    assert runner.status().position == positions[-1]  # nothing moved
    assert runner.run_once() == 0
    assert mailed == positions  # each mailed once
