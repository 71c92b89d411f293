"""The async stores' pool of threads for blocking driver calls (``AsyncRunner``)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from eventfold._acompat import AsyncRunner

GUARD = 20.0


@pytest.mark.asyncio
async def test_results_and_errors_come_back_to_the_awaiting_task() -> None:
    runner = AsyncRunner(max_workers=2)
    try:
        assert await runner.run(lambda a, b=0: a + b, 1, b=2) == 3

        def fails() -> None:
            raise KeyError("boom")

        with pytest.raises(KeyError, match="boom"):
            await runner.run(fails)
    finally:
        runner.close()


@pytest.mark.asyncio
async def test_calls_run_side_by_side_up_to_max_workers() -> None:
    runner = AsyncRunner(max_workers=3)
    inside = threading.Semaphore(0)
    release = threading.Event()
    names: set[str] = set()

    def block() -> None:
        names.add(threading.current_thread().name)
        inside.release()
        release.wait(GUARD)

    try:
        calls = [asyncio.create_task(runner.run(block)) for _ in range(4)]
        for _ in range(3):  # three run at once...
            assert await asyncio.to_thread(inside.acquire, True, GUARD)
        # ...the fourth waits for a free thread: no fourth thread is started.
        assert not await asyncio.to_thread(inside.acquire, True, 0.2)
        release.set()
        await asyncio.wait_for(asyncio.gather(*calls), GUARD)
        assert len(names) == 3
    finally:
        release.set()
        runner.close()


@pytest.mark.asyncio
async def test_a_call_cancelled_before_it_starts_is_not_run() -> None:
    runner = AsyncRunner(max_workers=1)
    started = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    def block() -> None:
        started.set()
        release.wait(GUARD)

    try:
        first = asyncio.create_task(runner.run(block))
        assert await asyncio.to_thread(started.wait, GUARD)
        queued = asyncio.create_task(runner.run(ran.append, "queued"))
        await asyncio.sleep(0)  # the call is queued behind the blocked one
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        release.set()
        await asyncio.wait_for(first, GUARD)
        assert await runner.run(ran.append, "after") is None
        assert ran == ["after"]
    finally:
        release.set()
        runner.close()


@pytest.mark.asyncio
async def test_close_waits_for_running_calls_then_refuses_new_ones() -> None:
    runner = AsyncRunner(max_workers=2)
    started = threading.Event()
    release = threading.Event()
    done: list[bool] = []

    def work() -> None:
        started.set()
        release.wait(GUARD)
        done.append(True)

    call = asyncio.create_task(runner.run(work))
    assert await asyncio.to_thread(started.wait, GUARD)
    closing = asyncio.create_task(asyncio.to_thread(runner.close))
    await asyncio.sleep(0.05)
    assert not closing.done()  # still running: close waits
    release.set()
    await asyncio.wait_for(closing, GUARD)
    assert done == [True]
    await asyncio.wait_for(call, GUARD)
    with pytest.raises(RuntimeError, match="after close"):
        await runner.run(lambda: None)
