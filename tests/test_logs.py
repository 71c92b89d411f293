"""Structured logs: warnings and errors name the projection, stream, version and position."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

from eventfold import AsyncCommandHandler, AsyncMemoryEventStore, MemoryEventStore, RecordedEvent
from eventfold.processes import AsyncDispatch, AsyncProcessManager
from eventfold.projections import (
    SKIP,
    AsyncProjectionRunner,
    Projection,
    ProjectionContext,
    ProjectionRunner,
)
from eventfold.testing._events import Deposited, Greet, welcome

SRC = Path(__file__).resolve().parent.parent / "src" / "eventfold"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def fails_on_seven(ctx: ProjectionContext, event: RecordedEvent) -> None:
    if event.data.amount == 7:
        raise ValueError("seven")


def test_a_skipped_event_is_logged_with_its_projection_stream_version_and_position(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryEventStore()
    store.append("acc-1", [Deposited(amount=1), Deposited(amount=7)])
    poison = list(store.read("acc-1"))[1]
    runner = ProjectionRunner(store, Projection("sevens", fails_on_seven, on_error=SKIP))
    with caplog.at_level(logging.WARNING, logger="eventfold.projections"):
        assert runner.run_once() == 2
    (record,) = [r for r in caplog.records if r.name == "eventfold.projections"]
    assert (record.projection, record.stream, record.version, record.position) == (  # type: ignore[attr-defined]
        "sevens",
        "acc-1",
        2,
        poison.position,
    )
    assert "'acc-1' v2" in record.getMessage() and "sevens" in record.getMessage()


@pytest.mark.asyncio
async def test_a_restart_is_logged_with_the_event_it_stopped_at(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = AsyncMemoryEventStore()
    failures = [1]

    async def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
        if failures:
            failures.pop()
            raise ValueError("once")

    last = await store.append("acc-2", [Deposited(amount=3)])
    runner = AsyncProjectionRunner(store, Projection("once", handle), poll_interval=0.02)
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="eventfold.projections"):
        task = asyncio.create_task(runner.run_forever(stop, max_backoff=0.05))
        await store.wait_for("once", last.position, timeout=30)
        stop.set()
        await task
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert (error.projection, error.stream, error.version, error.position) == (  # type: ignore[attr-defined]
        "once",
        "acc-2",
        1,
        last.position,
    )


@pytest.mark.asyncio
async def test_a_compensated_rejection_is_logged_with_the_event_it_reacted_to(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = AsyncMemoryEventStore()
    handler = AsyncCommandHandler(store, welcome)

    def react(event: RecordedEvent) -> list[AsyncDispatch]:
        return [AsyncDispatch(handler, "welcome", Greet("x"))]

    def sorry(event: RecordedEvent, sent: AsyncDispatch, error: Exception) -> list[AsyncDispatch]:
        return []

    types = [Deposited.__event_type__]
    manager = AsyncProcessManager("greeter", react, types=types, on_rejected=sorry)
    await store.append("acc-3", [Deposited(amount=1), Deposited(amount=2)])
    second = [e async for e in store.read("acc-3")][1]
    with caplog.at_level(logging.INFO, logger="eventfold.processes"):
        assert await manager.runner(store).run_once() == 2
    (record,) = [r for r in caplog.records if r.name == "eventfold.processes"]
    assert (record.projection, record.stream, record.version, record.position) == (  # type: ignore[attr-defined]
        "greeter",
        "acc-3",
        2,
        second.position,
    )


def test_every_logger_is_documented() -> None:
    names = set()
    for path in SRC.rglob("*.py"):
        names.update(re.findall(r'getLogger\("([\w.]+)"\)', path.read_text(encoding="utf-8")))
    documented = set(re.findall(r"^\| `(eventfold[\w.]*)` \|", DOCS.read_text(), re.MULTILINE))
    assert names and names == documented
