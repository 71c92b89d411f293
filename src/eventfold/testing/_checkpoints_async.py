"""Conformance for a store's checkpoints and transactions (the seam projections use).

Subclass it with the same ``store`` fixture as the store suite; every
built-in store runs it, and a third-party store that runs it can run
projections, process managers and the CLI's projection commands.
"""

from __future__ import annotations

import asyncio  # unasync: import threading
import time
import uuid
from typing import Any, TypeVar

import pytest

from eventfold.errors import CheckpointRegression, ProjectionBehind, SerializationError
from eventfold.serialization import Serializer, TypeRegistry
from eventfold.store import AsyncEventStore, Undecodable
from eventfold.testing._events import Deposited, Received, Withdrawn
from eventfold.testing._support import async_alongside, async_collect

__all__ = ["AsyncCheckpointsSuite"]


class Boom(Exception):
    """Raised inside a transaction to roll it back."""


T = TypeVar("T")


def name() -> str:
    """A checkpoint name no other test used (PostgreSQL tests share a schema per class)."""
    return f"cp-{uuid.uuid4().hex[:10]}"


class AsyncCheckpointsSuite:
    """What ``store.checkpoints()`` and ``store.transaction()`` must do. Provide ``store``."""

    pytestmark = pytest.mark.asyncio  # unasync: remove

    async def test_leases_are_exclusive_until_released_or_expired(
        self, store: AsyncEventStore
    ) -> None:
        cps, n = store.checkpoints(), name()
        assert await cps.get(n) is None
        assert await cps.acquire(n, "a", 30)
        assert await cps.owns(n, "a") and not await cps.owns(n, "b")
        assert not await cps.acquire(n, "b", 30)  # a live lease is another's
        assert await cps.acquire(n, "a", 30)  # renewing one's own
        await cps.release(n, "b")  # not b's to release
        assert await cps.owns(n, "a")
        await cps.release(n, "a")
        assert await cps.acquire(n, "b", 0.2)
        deadline = time.monotonic() + 30
        while not await cps.acquire(n, "a", 30):  # b's short lease runs out
            assert time.monotonic() < deadline, "the lease never expired"
            await asyncio.sleep(0.05)  # unasync: time.sleep(0.05)
        assert await cps.owns(n, "a")
        assert n in await cps.names() and await cps.names() == sorted(await cps.names())

    async def test_advance_is_fenced_and_only_forward(self, store: AsyncEventStore) -> None:
        cps, n = store.checkpoints(), name()
        first = await store.append("s", [Deposited(amount=1)])
        second = await store.append("s", [Deposited(amount=2)])
        assert await cps.acquire(n, "a", 30)
        async with cps.transaction() as tx:
            assert await cps.advance(tx, n, first.position, "a", 30)
        async with cps.transaction() as tx:
            assert not await cps.advance(tx, n, second.position, "b", 30)  # not the holder
        checkpoint = await cps.get(n)
        assert checkpoint is not None and checkpoint.position == first.position
        for behind in (first.position, first.position - 1):
            with pytest.raises(CheckpointRegression) as info:
                async with cps.transaction() as tx:
                    await cps.advance(tx, n, behind, "a", 30)
            assert info.value.current == first.position
        checkpoint = await cps.get(n)
        assert checkpoint is not None and checkpoint.position == first.position

    async def test_a_checkpoint_commits_with_an_append_or_not_at_all(
        self, store: AsyncEventStore
    ) -> None:
        """The exactly-once seam: a process manager's events and its position, together."""
        cps, n = store.checkpoints(), name()
        trigger = await store.append("in", [Deposited(amount=1)])
        assert await cps.acquire(n, "pm", 30)
        if cps.transactional:
            with pytest.raises(Boom):
                async with cps.transaction() as tx:
                    await tx.append("out", [Withdrawn(amount=1)])
                    await cps.advance(tx, n, trigger.position, "pm", 30)
                    raise Boom
            assert await store.get_stream("out") is None
            checkpoint = await cps.get(n)
            assert checkpoint is not None and checkpoint.position == 0
        async with cps.transaction() as tx:
            result = await tx.append("out", [Withdrawn(amount=1)])
            assert await cps.advance(tx, n, trigger.position, "pm", 30)
        assert [e.data for e in await async_collect(store.read("out"))] == [Withdrawn(amount=1)]
        assert result.to_version == 1
        checkpoint = await cps.get(n)
        assert checkpoint is not None and checkpoint.position == trigger.position

    async def test_a_transaction_rolls_back_its_appends(self, store: AsyncEventStore) -> None:
        transactional = store.checkpoints().transactional
        before = await store.last_position()
        with pytest.raises(Boom):
            async with store.transaction() as tx:
                await tx.append("t", [Deposited(amount=1)])
                await tx.append("t", [Deposited(amount=2)], expected=1)
                raise Boom
        if transactional:
            assert await store.get_stream("t") is None
            assert await store.last_position() == before
        else:  # a store without transactions says so: its appends were immediate
            info = await store.get_stream("t")
            assert info is not None and info.version == 2

    async def test_reset_is_fenced_and_clears_dead_letters(self, store: AsyncEventStore) -> None:
        cps, n = store.checkpoints(), name()
        result = await store.append("s", [Deposited(amount=1)])
        (event,) = await async_collect(store.read("s"))
        assert await cps.acquire(n, "a", 30)
        async with cps.transaction() as tx:
            await cps.advance(tx, n, result.position, "a", 30)
            await cps.dead_letter(tx, n, event, "Boom: no")
        (letter,) = await cps.dead_letters(n)
        assert (letter.position, letter.stream, letter.version) == (result.position, "s", 1)
        assert letter.type == event.type and "Boom" in letter.error
        # The event as stored, where the store can give it (ProcessCheckpoints cannot).
        assert (letter.data, letter.schema_version) in ((b'{"amount":1}', 1), (None, None))
        async with cps.transaction() as tx:
            assert not await cps.reset(tx, n, "b")
        checkpoint = await cps.get(n)
        assert checkpoint is not None and checkpoint.position == result.position
        async with cps.transaction() as tx:
            assert await cps.reset(tx, n, "a")
        checkpoint = await cps.get(n)
        assert checkpoint is not None and (checkpoint.position, checkpoint.owner) == (0, "a")
        assert await cps.dead_letters(n) == []

    async def test_aliases_point_at_a_consumer(self, store: AsyncEventStore) -> None:
        cps, alias = store.checkpoints(), name()
        assert await cps.get_alias(alias) is None
        await cps.set_alias(alias, "v1")
        await cps.set_alias(alias, "v2")
        assert await cps.get_alias(alias) == "v2"

    async def test_backlog_counts_what_is_after_a_position(self, store: AsyncEventStore) -> None:
        cps = store.checkpoints()
        assert await cps.backlog(await store.last_position()) == (0, None)
        first = await store.append("s", [Deposited(amount=1)])
        await store.append("s", [Deposited(amount=2), Deposited(amount=3)])
        count, oldest = await cps.backlog(first.position)
        assert count == 2 and oldest is not None
        count, _ = await cps.backlog(0)
        assert count == 3

    async def test_pages_give_the_log_in_order_with_filters(self, store: AsyncEventStore) -> None:
        cps = store.checkpoints()
        await store.append("acc-1", [Deposited(amount=1), Withdrawn(amount=1)])
        await store.append("other", [Deposited(amount=2)])
        await store.append("acc-2", [Deposited(amount=3)])
        every = await async_collect(store.read_all())
        for read_ahead in (False, True):
            pages = await async_collect(cps.pages(0, None, None, 2, read_ahead=read_ahead))
            assert all(1 <= len(p) <= 2 for p in pages)
            assert [e for p in pages for e in p] == every
        deposits = ["eventfold.testing.Deposited"]
        pages = await async_collect(cps.pages(every[0].position, deposits, "acc-", 10))
        assert [(e.stream, e.data) for p in pages for e in p] == [("acc-2", Deposited(amount=3))]

    async def test_pages_with_head_say_how_far_each_read_got(self, store: AsyncEventStore) -> None:
        cps = store.checkpoints()
        await store.append("acc-1", [Deposited(amount=1), Withdrawn(amount=1)])
        await store.append("other", [Deposited(amount=2), Deposited(amount=3)])
        every = await async_collect(store.read_all())
        reader = getattr(cps, "pages_with_head", None)
        if reader is None:  # optional: a runner reads the log's head instead
            assert await store.last_position() == every[-1].position
            return
        deposits = ["eventfold.testing.Deposited"]
        for read_ahead in (False, True):
            for size in (1, 2, 10):
                items = await async_collect(
                    reader(0, deposits, "acc-", size, read_ahead=read_ahead)
                )
                pages = [page for page, _ in items]
                assert [e.data for p in pages for e in p] == [Deposited(amount=1)]
                assert all(len(p) <= size for p in pages) and all(pages[:-1])
                heads = [head for _, head in items]
                assert heads == sorted(heads)  # never back
                # Past the events the filters skip at the end of the log.
                assert heads[-1] == every[-1].position
                for page, head in items:
                    assert all(e.position <= head for e in page)

    async def test_pages_hand_over_undecodable_events(self, store: AsyncEventStore) -> None:
        await store.append("s", [Deposited(amount=1), Received(quantity=2), Deposited(amount=3)])
        registry = TypeRegistry()
        registry.register(Deposited, name="eventfold.testing.Deposited")
        store.serializer = Serializer(registry)  # Received is unknown to this release
        pages = await async_collect(store.checkpoints().pages(0, None, None, 10))
        events = [e for p in pages for e in p]
        assert [type(e.data).__name__ for e in events] == ["Deposited", "Undecodable", "Deposited"]
        undecodable: Any = events[1].data
        assert isinstance(undecodable, Undecodable)
        assert isinstance(undecodable.error, SerializationError)
        assert undecodable.error.position == events[1].position

    async def test_wait_returns_on_news_on_stop_or_after_the_timeout(
        self, store: AsyncEventStore
    ) -> None:
        cps = store.checkpoints()
        after = await store.last_position()
        stop = asyncio.Event()  # unasync: stop = threading.Event()
        started = time.monotonic()
        await cps.wait(after, 0.2, stop)  # nothing new: the timeout
        assert time.monotonic() - started >= 0.15
        await store.append("s", [Deposited(amount=1)])
        started = time.monotonic()
        await cps.wait(after, 30, stop)  # there is news: it returns at once
        assert time.monotonic() - started < 25, "wait() missed the news"
        stop.set()
        started = time.monotonic()
        await cps.wait(await store.last_position(), 30, stop)  # stopped: it returns at once
        assert time.monotonic() - started < 25, "wait() ignored stop"
        await cps.close()

    async def test_wait_for_returns_once_a_consumer_has_passed_a_position(
        self, store: AsyncEventStore
    ) -> None:
        cps, n = store.checkpoints(), name()
        first = await store.append("s", [Deposited(amount=1)])
        second = await store.append("s", [Deposited(amount=2)])
        with pytest.raises(ProjectionBehind) as behind:
            await store.wait_for(n, first.position, timeout=0.05)  # no checkpoint yet
        assert (behind.value.name, behind.value.position, behind.value.reached) == (
            n,
            first.position,
            0,
        )
        assert behind.value.retryable and isinstance(behind.value, TimeoutError)
        assert await cps.acquire(n, "a", 30)
        async with cps.transaction() as tx:
            assert await cps.advance(tx, n, first.position, "a", 30)
        assert await store.wait_for(n, first.position, timeout=0) == first.position
        assert await store.wait_for(n, 1, timeout=0) == first.position  # passed long ago
        moved: list[int] = []

        async def move() -> None:
            async with cps.transaction() as tx:
                moved.append(second.position)
                assert await cps.advance(tx, n, second.position, "a", 30)

        async def wait() -> int:
            return await store.wait_for(n, second.position, timeout=30)

        reached, _ = await async_alongside(wait, move)
        assert reached == second.position and moved == [second.position]
        # An alias waits for the consumer it points at.
        await cps.set_alias(f"{n}-live", n)
        assert await store.wait_for(f"{n}-live", second.position, timeout=0) == second.position
        with pytest.raises(ProjectionBehind):
            await store.wait_for(f"{n}-live", second.position + 1, timeout=0.05)

    async def test_wait_for_an_alias_follows_a_switch_made_while_waiting(
        self, store: AsyncEventStore
    ) -> None:
        cps, blue, green, alias = store.checkpoints(), name(), name(), name()
        positions = [(await store.append("s", [Deposited(amount=n)])).position for n in range(3)]
        for consumer in (blue, green):
            assert await cps.acquire(consumer, "a", 30)
        await cps.set_alias(alias, blue)

        async def switch_then_move() -> None:
            await cps.set_alias(alias, green)
            async with cps.transaction() as tx:  # the old target passes: not the alias's
                assert await cps.advance(tx, blue, positions[1], "a", 30)
            async with cps.transaction() as tx:
                assert await cps.advance(tx, green, positions[2], "a", 30)

        async def wait() -> int:
            return await store.wait_for(alias, positions[1], timeout=30)

        reached, _ = await async_alongside(wait, switch_then_move)
        assert reached == positions[2]  # green's, where the alias points
