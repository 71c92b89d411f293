"""Conformance for projections, process managers and inline projections, in both flavours.

Subclass it with a ``store`` fixture (the same as the store suites): it runs
the projection runner, the process manager and the inline projections of the
store's flavour against it. The read model is a tally per stream, a SQL
table when the store's transactions have a connection (written with
``ctx.execute``: portable SQL) and a dict otherwise; every test compares it
with the same tally folded from the log itself.
"""

from __future__ import annotations

import asyncio  # unasync: import threading
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from eventfold.commands import AsyncCommandHandler
from eventfold.errors import ConfigurationError, InvalidRequest, ProjectionStopped
from eventfold.events import RecordedEvent
from eventfold.processes import AsyncDispatch, AsyncProcessManager
from eventfold.projections import (
    SKIP,
    AsyncProjectionRunner,
    ErrorPolicy,
    Progress,
    Projection,
    ProjectionContext,
    async_active_projection,
    async_attach_inline,
    async_detach_inline,
    async_switch_projection,
)
from eventfold.store import AsyncEventStore
from eventfold.testing._events import Deposited, Greet, Greeted, Opened, Withdrawn, welcome
from eventfold.testing._support import async_alongside, async_collect, async_fetchall

__all__ = ["AsyncProjectionsSuite"]

DEPOSITED = "eventfold.testing.Deposited"


class Boom(Exception):
    """A handler's failure."""


class Tally:
    """Deposits per stream (count and total): a SQL table, or a dict without SQL."""

    def __init__(self) -> None:
        # Unique per test: on PostgreSQL the tests of a class share a database.
        self.name = f"tally_{uuid.uuid4().hex[:10]}"
        self.memory: dict[str, tuple[int, int]] = {}
        self.failures: dict[int, int] = {}  # amount -> how many more times it fails
        self.seen: list[int] = []  # positions handled, in order (also rolled back ones)
        self.replayed: list[int] = []  # positions handled with ctx.replaying

    def projection(self, **options: Any) -> Projection:
        options.setdefault("types", [DEPOSITED])
        return Projection(
            self.name, self.handle, setup=self.setup, teardown=self.teardown, **options
        )

    async def setup(self, ctx: ProjectionContext) -> None:
        if ctx.connection is not None:
            await ctx.execute(
                f"CREATE TABLE IF NOT EXISTS {self.name} "
                "(stream TEXT PRIMARY KEY, n BIGINT NOT NULL, total BIGINT NOT NULL)"
            )

    async def teardown(self, ctx: ProjectionContext) -> None:
        self.memory.clear()
        if ctx.connection is not None:
            await ctx.execute(f"DROP TABLE IF EXISTS {self.name}")

    async def handle(self, ctx: ProjectionContext, event: RecordedEvent) -> None:
        self.seen.append(event.position)
        if ctx.replaying:
            self.replayed.append(event.position)
        amount = event.data.amount
        if self.failures.get(amount, 0) > 0:
            self.failures[amount] -= 1
            raise Boom(f"amount {amount}")
        if ctx.connection is None:
            n, total = self.memory.get(event.stream, (0, 0))
            self.memory[event.stream] = (n + 1, total + amount)
            return
        await ctx.execute(
            f"INSERT INTO {self.name} (stream, n, total) VALUES (?, 1, ?) "
            f"ON CONFLICT (stream) DO UPDATE SET n = {self.name}.n + 1, "
            f"total = {self.name}.total + excluded.total",
            (event.stream, amount),
        )

    async def read(self, store: AsyncEventStore) -> dict[str, tuple[int, int]]:
        async with store.transaction() as tx:
            if tx.connection is None:
                return dict(self.memory)
            cursor = await tx.execute(f"SELECT stream, n, total FROM {self.name}")
            return {row[0]: (int(row[1]), int(row[2])) for row in await async_fetchall(cursor)}


async def folded(store: AsyncEventStore, skip: Sequence[int] = ()) -> dict[str, tuple[int, int]]:
    """The tally taken from the log itself (deposits of the amounts not in ``skip``)."""
    result: dict[str, tuple[int, int]] = {}
    async for event in store.read_all():
        if isinstance(event.data, Deposited) and event.data.amount not in skip:
            n, total = result.get(event.stream, (0, 0))
            result[event.stream] = (n + 1, total + event.data.amount)
    return result


async def fill(store: AsyncEventStore, streams: int = 4, rounds: int = 6) -> None:
    """Deposits and withdrawals over a few streams (withdrawals: not the tally's type)."""
    for n in range(rounds):
        for s in range(streams):
            await store.append(f"acc-{s}", [Deposited(amount=10 + n), Withdrawn(amount=1)])


class AsyncProjectionsSuite:
    """What a projection runner, a process manager and inline projections must do.

    Set ``append_hooks = False`` for a store that takes no append hooks: its
    inline projections must then be refused with ConfigurationError.
    """

    append_hooks = True
    pytestmark = pytest.mark.asyncio  # unasync: remove

    # -- catching up --------------------------------------------------------------------

    async def test_catch_up_builds_the_read_model_exactly_once(
        self, store: AsyncEventStore
    ) -> None:
        await fill(store)
        tally = Tally()
        runner = AsyncProjectionRunner(store, tally.projection(batch_size=5))
        assert await runner.run_once() == 24
        assert await tally.read(store) == await folded(store)
        assert await runner.get_position() == await store.last_position()
        await store.append("acc-9", [Deposited(amount=3)])
        await runner.release()
        # A new runner (another process) goes on from the stored checkpoint.
        again = AsyncProjectionRunner(store, tally.projection(batch_size=5))
        assert await again.run_once() == 1
        assert await tally.read(store) == await folded(store)
        status = await again.status()
        assert (status.position, status.lag_events, status.dead_letters) == (
            await store.last_position(),
            0,
            0,
        )

    async def test_a_plain_handler_runs_on_the_runner_too(self, store: AsyncEventStore) -> None:
        await fill(store, streams=2, rounds=2)
        seen: list[int] = []

        def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
            seen.append(event.position)

        runner = AsyncProjectionRunner(store, Projection(f"plain-{uuid.uuid4().hex}", handle))
        assert await runner.run_once() == 8
        assert seen == [e.position async for e in store.read_all()]

    async def test_in_memory_projections_start_from_zero_in_each_runner(
        self, store: AsyncEventStore
    ) -> None:
        await fill(store, streams=2, rounds=3)
        for _ in range(2):
            tally = Tally()
            runner = AsyncProjectionRunner(store, tally.projection(in_memory=True, batch_size=4))
            assert await runner.run_once() == 6
            assert tally.memory == await folded(store)
            assert runner.position == await store.last_position()

    async def test_rebuild_replays_everything_and_reports_progress(
        self, store: AsyncEventStore
    ) -> None:
        await fill(store)
        tally = Tally()
        runner = AsyncProjectionRunner(store, tally.projection(batch_size=5))
        reports: list[Progress] = []
        assert await runner.catch_up(progress=reports.append) == 24
        assert [r.done for r in reports] == sorted(r.done for r in reports)
        assert reports[-1].done == 24
        assert reports[-1].left == 0  # the log ends with events it skips: moved over too
        assert (await runner.status()).lag_events == 0
        assert await runner.rebuild() == 24
        assert await tally.read(store) == await folded(store)
        assert len(tally.replayed) == 24  # handled again after the reset: replaying

    # -- errors -------------------------------------------------------------------------

    async def test_the_stop_policy_stops_at_the_failing_event(self, store: AsyncEventStore) -> None:
        await fill(store, streams=2, rounds=3)
        tally = Tally()
        tally.failures[11] = 1_000
        runner = AsyncProjectionRunner(store, tally.projection(batch_size=3))
        with pytest.raises(ProjectionStopped) as stopped:
            await runner.run_once()
        assert stopped.value.event.data == Deposited(amount=11)
        status = await runner.status()
        assert status.position < stopped.value.event.position  # handled: everything before
        assert status.last_error is not None and "amount 11" in status.last_error
        assert await tally.read(store) == await folded(store, skip=[11, 12])
        tally.failures.clear()  # fixed: the next run goes on from the failing event
        assert await runner.run_once() == 4
        assert await tally.read(store) == await folded(store)

    async def test_the_skip_policy_dead_letters_and_goes_on(self, store: AsyncEventStore) -> None:
        await fill(store, streams=2, rounds=3)
        tally = Tally()
        tally.failures[11] = 1_000
        runner = AsyncProjectionRunner(store, tally.projection(on_error=SKIP, batch_size=4))
        assert await runner.run_once() == 6
        letters = await runner.dead_letters()
        elevens = [e.position async for e in store.read_all() if e.data == Deposited(amount=11)]
        assert sorted(letter.position for letter in letters) == elevens
        assert all("amount 11" in letter.error for letter in letters)
        assert await tally.read(store) == await folded(store, skip=[11])
        assert (await runner.status()).dead_letters == 2

    async def test_retries_recover_from_a_transient_failure(self, store: AsyncEventStore) -> None:
        await fill(store, streams=2, rounds=2)
        tally = Tally()
        tally.failures[11] = 2  # fails twice, then works
        policy = ErrorPolicy(retries=2, backoff=0.001)
        runner = AsyncProjectionRunner(store, tally.projection(on_error=policy, batch_size=4))
        assert await runner.run_once() == 4
        assert await runner.dead_letters() == []
        assert await tally.read(store) == await folded(store)

    # -- one runner at a time -----------------------------------------------------------

    async def test_a_second_runner_is_on_standby_while_the_lease_is_held(
        self, store: AsyncEventStore
    ) -> None:
        await fill(store, streams=2, rounds=2)
        tally = Tally()
        first = AsyncProjectionRunner(store, tally.projection(), lease_seconds=30)
        second = AsyncProjectionRunner(store, tally.projection(), lease_seconds=30)
        assert await first.run_once() == 4
        await store.append("acc-0", [Deposited(amount=5)])
        assert await second.run_once() == 0
        assert (await second.status()).standby
        assert await first.run_once() == 1
        await first.release()
        await store.append("acc-0", [Deposited(amount=6)])
        assert await second.run_once() == 1  # released: the standby takes over
        assert await tally.read(store) == await folded(store)

    async def test_an_expired_lease_fails_over_and_fences_the_old_owner(
        self, store: AsyncEventStore
    ) -> None:
        await fill(store, streams=2, rounds=2)
        tally = Tally()
        stale = AsyncProjectionRunner(store, tally.projection(), lease_seconds=0.05)
        assert await stale.run_once() == 4
        standby = AsyncProjectionRunner(store, tally.projection(), lease_seconds=30)
        await store.append("acc-0", [Deposited(amount=5)])
        while await standby.run_once() == 0:  # until the stale owner's lease ran out
            await asyncio.sleep(0.01)  # unasync: threading.Event().wait(0.01)
        await store.append("acc-1", [Deposited(amount=6)])
        assert await stale.run_once() == 0  # it cannot take the lease back
        # Nor move the checkpoint behind the new owner: its advances are fenced.
        checkpoints = store.checkpoints()
        async with checkpoints.transaction() as tx:
            last = await store.last_position()
            assert not await checkpoints.advance(tx, tally.name, last, stale.owner, 30)
        assert await standby.run_once() == 1
        assert await tally.read(store) == await folded(store)

    # -- live ---------------------------------------------------------------------------

    async def test_run_follows_concurrent_writers_and_stops_on_request(
        self, store: AsyncEventStore
    ) -> None:
        tally = Tally()
        runner = AsyncProjectionRunner(store, tally.projection(batch_size=7), poll_interval=0.05)
        stop = asyncio.Event()  # unasync: stop = threading.Event()

        async def write() -> int:
            last = 0
            for n in range(40):
                result = await store.append(f"acc-{n % 3}", [Deposited(amount=n + 1)])
                last = result.position
            reached = await store.wait_for(tally.name, last, timeout=30)
            stop.set()
            return reached

        _, reached = await async_alongside(lambda: runner.run(stop), write)
        assert reached >= await store.last_position()
        assert await tally.read(store) == await folded(store)
        assert len(tally.seen) == len(set(tally.seen))  # none handled twice
        assert not (await runner.status()).running

    async def test_run_forever_restarts_after_a_failure(self, store: AsyncEventStore) -> None:
        tally = Tally()
        # The first run stops at it (a batch that rolled back is tried again event
        # by event first, where a transaction can roll back); the restart handles it.
        tally.failures[7] = 2 if store.checkpoints().transactional else 1
        runner = AsyncProjectionRunner(store, tally.projection(), poll_interval=0.02)
        stop = asyncio.Event()  # unasync: stop = threading.Event()

        async def write() -> None:
            await store.append("acc-0", [Deposited(amount=7)])
            last = await store.append("acc-1", [Deposited(amount=8)])
            await store.wait_for(tally.name, last.position, timeout=30)
            stop.set()

        await async_alongside(lambda: runner.run_forever(stop, max_backoff=0.05), write)
        status = await runner.status()
        assert status.restarts == 1 and status.running is False
        assert await tally.read(store) == await folded(store)

    # -- external projections and process managers ----------------------------------------

    async def test_a_reset_refuses_to_replay_effects_unless_asked(
        self, store: AsyncEventStore
    ) -> None:
        await fill(store, streams=1, rounds=3)
        tally = Tally()
        runner = AsyncProjectionRunner(store, tally.projection(external=True))
        assert await runner.run_once() == 3
        with pytest.raises(InvalidRequest):
            await runner.reset()
        await runner.reset(replay_effects=True)
        assert await runner.run_once() == 3
        assert len(tally.replayed) == 3  # the handler could tell, and skip the mail
        await store.append("acc-0", [Deposited(amount=50)])
        assert await runner.run_once() == 1
        assert len(tally.replayed) == 3  # a new event is live

    async def test_a_process_manager_sends_each_command_once(self, store: AsyncEventStore) -> None:
        handler = AsyncCommandHandler(store, welcome)

        async def react(event: RecordedEvent) -> list[AsyncDispatch]:
            account = event.stream.removeprefix("acc-")
            return [AsyncDispatch(handler, f"welcome-{account}", Greet(event.data.owner))]

        manager = AsyncProcessManager(
            f"welcomes-{uuid.uuid4().hex[:8]}", react, types=["eventfold.testing.Opened"]
        )
        for n in range(3):
            await store.append(f"acc-{n}", [Opened(owner=f"owner-{n}")])
        runner = manager.runner(store)
        assert await runner.run_once() == 3
        # Redelivered (a crash before the checkpoint moved): nothing is sent twice.
        await runner.reset(replay_effects=True)
        assert await manager.runner(store).run_once() == 3
        for n in range(3):
            events = await async_collect(store.read(f"welcome-{n}"))
            assert [e.data for e in events] == [Greeted(owner=f"owner-{n}")]
            opened = await async_collect(store.read(f"acc-{n}"))
            assert events[0].metadata["causation_id"] == str(opened[0].id)

    # -- blue/green and inline -----------------------------------------------------------

    async def test_a_rebuild_beside_the_live_version_then_a_switch(
        self, store: AsyncEventStore
    ) -> None:
        await fill(store, streams=2, rounds=2)
        blue, green = Tally(), Tally()
        await AsyncProjectionRunner(store, blue.projection()).run_once()
        await async_switch_projection(store, "tally", blue.projection())
        assert await AsyncProjectionRunner(store, green.projection()).run_once() == 4
        assert await green.read(store) == await blue.read(store)
        await async_switch_projection(store, "tally", green.name)
        assert await async_active_projection(store, "tally") == green.name
        last = await store.last_position()
        assert await store.wait_for("tally", last, timeout=5) >= last

    async def test_an_inline_projection_reads_its_writes_and_can_veto(
        self, store: AsyncEventStore
    ) -> None:
        tally = Tally()
        tally.failures[13] = 1_000
        projection = tally.projection()
        if not self.append_hooks:
            with pytest.raises(ConfigurationError):
                await async_attach_inline(store, projection)
            return
        await async_attach_inline(store, projection)
        try:
            await store.append("acc-0", [Deposited(amount=1), Deposited(amount=2)])
            assert await tally.read(store) == {"acc-0": (2, 3)}
            with pytest.raises(Boom):
                await store.append("acc-0", [Deposited(amount=13)])
            stored = [e.data async for e in store.read("acc-0")]
            assert stored == [Deposited(amount=1), Deposited(amount=2)]  # nothing of the veto
            assert await tally.read(store) == await folded(store) == {"acc-0": (2, 3)}
        finally:
            await async_detach_inline(store, projection)
        await store.append("acc-0", [Deposited(amount=13)])  # detached: no veto
        assert await tally.read(store) == {"acc-0": (2, 3)}
