"""Conformance for stream lifecycle, lookups, time windows and snapshots.

Subclass it next to the main suite with the same ``store`` fixture.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TypeVar

import pytest

from eventfold.errors import InvalidRequest, StreamDeleted, StreamNotFound
from eventfold.events import NewEvent, uuid7
from eventfold.store import AsyncEventStore
from eventfold.testing._events import Deposited, Withdrawn
from eventfold.testing._support import async_collect

__all__ = ["AsyncEventStoreLifecycleSuite"]

T = TypeVar("T")


class AsyncEventStoreLifecycleSuite:
    """Deletion, truncation, find_event, read_all time windows and snapshots."""

    pytestmark = pytest.mark.asyncio  # unasync: remove

    async def test_find_event_by_id(self, store: AsyncEventStore) -> None:
        event = NewEvent(data=Deposited(amount=3), metadata={"k": "v"})
        await store.append("s", [Deposited(amount=1), event])
        found = await store.find_event(event.id)
        assert found is not None
        assert (found.stream, found.version, found.data) == ("s", 2, Deposited(amount=3))
        assert dict(found.metadata) == {"k": "v"}
        assert await store.find_event(uuid7()) is None
        with pytest.raises(InvalidRequest):
            await store.find_event(str(event.id))  # type: ignore[arg-type]

    async def test_soft_delete_hides_and_restore_recovers(self, store: AsyncEventStore) -> None:
        await store.append("keep", [Deposited(amount=1)])
        await store.append("gone", [Deposited(amount=2), Withdrawn(amount=1)])
        await store.append("keep", [Deposited(amount=3)])
        every = await async_collect(store.read_all())
        gone_ids = [e.id for e in every if e.stream == "gone"]
        await store.delete_stream("gone", by="ops@example.com", reason="duplicate account")

        assert await async_collect(store.read("gone")) == []
        assert [e.stream for e in await async_collect(store.read_all())] == ["keep", "keep"]
        assert await store.find_event(gone_ids[0]) is None
        info = await store.get_stream("gone")
        assert info is not None and info.deleted is not None
        assert (info.version, info.deleted.by, info.deleted.reason) == (
            2,
            "ops@example.com",
            "duplicate account",
        )
        assert not info.deleted.hard
        with pytest.raises(StreamDeleted):
            await store.append("gone", [Deposited(amount=9)])

        await store.restore_stream("gone")
        assert [e.id for e in await async_collect(store.read("gone"))] == gone_ids
        assert await async_collect(store.read_all()) == every
        restored = await store.get_stream("gone")
        assert restored is not None and restored.deleted is None
        assert (await store.append("gone", [Deposited(amount=9)], expected=2)).to_version == 3

    async def test_hard_delete_erases_for_good(self, store: AsyncEventStore) -> None:
        await store.append("pii", [Deposited(amount=1), Deposited(amount=2)])
        await store.append("other", [Deposited(amount=3)])
        last = await store.last_position()
        await store.delete_stream("pii", hard=True, by="dpo", reason="erasure request")
        info = await store.get_stream("pii")
        assert info is not None and info.deleted is not None and info.deleted.hard
        assert info.version == 2
        assert await async_collect(store.read("pii")) == []
        with pytest.raises(StreamDeleted):
            await store.restore_stream("pii")
        with pytest.raises(StreamDeleted):
            await store.append("pii", [Deposited(amount=9)])
        # Followers: the log goes on; positions of other events did not move.
        (other,) = await async_collect(store.read_all())
        assert other.position == last
        await store.append("other", [Deposited(amount=4)])
        assert (await async_collect(store.read_all(after=last)))[0].data == Deposited(amount=4)

    async def test_delete_and_restore_errors(self, store: AsyncEventStore) -> None:
        with pytest.raises(StreamNotFound):
            await store.delete_stream("never")
        with pytest.raises(StreamNotFound):
            await store.restore_stream("never")
        await store.append("s", [Deposited(amount=1)])
        await store.restore_stream("s")  # not deleted: nothing to do
        await store.delete_stream("s")
        await store.delete_stream("s")  # twice: still soft-deleted
        await store.delete_stream("s", hard=True)  # soft, then hard
        info = await store.get_stream("s")
        assert info is not None and info.deleted is not None and info.deleted.hard
        with pytest.raises(InvalidRequest):
            await store.delete_stream("s", by=3)  # type: ignore[arg-type]

    async def test_truncate_keeps_version_and_newest_event(self, store: AsyncEventStore) -> None:
        await store.append("t", [Deposited(amount=i) for i in range(1, 11)])
        erased = await store.truncate_stream("t", 7, by="retention", reason="older than 7 years")
        assert erased == 6
        assert [e.version for e in await async_collect(store.read("t"))] == [7, 8, 9, 10]
        store.page_size = 2
        assert [e.version for e in await async_collect(store.read("t", backwards=True))] == [
            10,
            9,
            8,
            7,
        ]
        assert [
            e.version for e in await async_collect(store.read("t", from_version=3, limit=2))
        ] == [
            7,
            8,
        ]
        info = await store.get_stream("t")
        assert info is not None and info.truncated is not None
        assert (info.version, info.first_version, info.truncated.by) == (10, 7, "retention")
        assert [e.version for e in await async_collect(store.read_all())] == [7, 8, 9, 10]
        assert await store.truncate_stream("t", 100) == 3  # the newest always stays
        assert [e.version for e in await async_collect(store.read("t"))] == [10]
        assert (await store.append("t", [Deposited(amount=11)], expected=10)).to_version == 11
        with pytest.raises(StreamNotFound):
            await store.truncate_stream("nope", 2)
        with pytest.raises(InvalidRequest):
            await store.truncate_stream("t", 0)

    async def test_read_all_time_window(self, store: AsyncEventStore) -> None:
        for i in range(6):
            await store.append(f"s-{i}", [Deposited(amount=i)])
        every = await async_collect(store.read_all())
        middle = every[2].recorded_at
        since = await async_collect(store.read_all(since=middle))
        assert since == [e for e in every if e.recorded_at >= middle]
        until = await async_collect(store.read_all(until=middle))
        assert until == [e for e in every if e.recorded_at < middle]
        window = await async_collect(
            store.read_all(since=middle, until=every[-1].recorded_at + timedelta(microseconds=1))
        )
        assert window == since
        limited = await async_collect(store.read_all(since=middle, limit=2))
        assert limited == since[:2]
        with pytest.raises(InvalidRequest):
            await async_collect(store.read_all(since=middle.replace(tzinfo=None)))

    async def test_snapshots_round_trip(self, store: AsyncEventStore) -> None:
        assert await store.load_snapshot("s") is None
        await store.save_snapshot("s", 10, "Account", 1, b'{"balance":10}')
        await store.save_snapshot("s", 20, "Account", 1, b'{"balance":20}')
        await store.save_snapshot("s", 20, "Account", 2, b'{"balance":21}')  # replaces
        await store.save_snapshot("t", 5, "Other", 1, b"{}")
        latest = await store.load_snapshot("s")
        assert latest is not None
        assert (latest.stream, latest.version, latest.schema_version, latest.data) == (
            "s",
            20,
            2,
            b'{"balance":21}',
        )
        older = await store.load_snapshot("s", max_version=19)
        assert older is not None and older.version == 10
        assert await store.load_snapshot("s", max_version=9) is None
        assert await store.delete_snapshots(state_type="Account", keep_schema_version=2) == 1
        assert await store.load_snapshot("s", max_version=19) is None
        assert await store.delete_snapshots("t") == 1
        assert await store.delete_snapshots() == 1
        assert await store.load_snapshot("s") is None
        with pytest.raises(InvalidRequest):
            await store.save_snapshot("s", 0, "Account", 1, b"{}")
