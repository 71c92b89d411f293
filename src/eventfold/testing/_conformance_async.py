"""The event store conformance suite.

Subclass it and provide one fixture, ``store``, yielding a fresh, empty store::

    class TestMyStore(AsyncEventStoreSuite):
        @pytest_asyncio.fixture
        async def store(self, tmp_path):
            store = AsyncMyStore(...)
            yield store
            await store.close()
"""

from __future__ import annotations

import asyncio  # unasync: import threading
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID, uuid4

import msgspec
import pytest

from eventfold.errors import (
    InvalidEvent,
    InvalidRequest,
    SerializationError,
    StoreClosed,
    StreamDeleted,
    UnknownEventType,
    WrongExpectedVersion,
)
from eventfold.events import NewEvent, RecordedEvent, uuid7
from eventfold.serialization import Serializer, TypeRegistry
from eventfold.store import ANY, NO_STREAM, STREAM_EXISTS, AsyncEventStore, StreamAppend
from eventfold.testing._events import (
    Deposited,
    Measured,
    Opened,
    Received,
    Unserialisable,
    Withdrawn,
)
from eventfold.testing._support import async_collect, async_within_seconds

__all__ = ["AsyncEventStoreSuite"]

T = TypeVar("T")


def error_field(payload: Any) -> str:
    """Where the suite expects a refused ``Unserialisable(payload=...)`` to be named."""
    if isinstance(payload, dict):
        return "payload.k"
    return "payload"


def deposits(*amounts: int) -> list[Deposited]:
    """One Deposited event per amount."""
    return [Deposited(amount=a) for a in amounts]


class AsyncEventStoreSuite:
    """Behaviour every event store must have. Provide a ``store`` fixture."""

    pytestmark = pytest.mark.asyncio  # unasync: remove

    # -- expected version -------------------------------------------------------------

    async def test_append_to_new_stream_then_read_back(self, store: AsyncEventStore) -> None:
        result = await store.append("acc-1", deposits(5, 7, 9), expected=NO_STREAM)
        assert (result.stream, result.from_version, result.to_version) == ("acc-1", 1, 3)
        events = await async_collect(store.read("acc-1"))
        assert [e.version for e in events] == [1, 2, 3]
        assert [e.data for e in events] == deposits(5, 7, 9)
        assert {e.stream for e in events} == {"acc-1"}
        assert [e.type for e in events] == ["eventfold.testing.Deposited"] * 3
        assert result.position == events[-1].position

    async def test_no_stream_rejects_an_existing_stream(self, store: AsyncEventStore) -> None:
        await store.append("s", deposits(1, 2))
        with pytest.raises(WrongExpectedVersion) as info:
            await store.append("s", deposits(3), expected=NO_STREAM)
        assert (info.value.stream, info.value.expected, info.value.actual) == ("s", NO_STREAM, 2)
        assert len(await async_collect(store.read("s"))) == 2

    async def test_stream_exists(self, store: AsyncEventStore) -> None:
        with pytest.raises(WrongExpectedVersion) as info:
            await store.append("s", deposits(1), expected=STREAM_EXISTS)
        assert info.value.actual == 0
        assert await store.get_stream("s") is None
        await store.append("s", deposits(1))
        result = await store.append("s", deposits(2), expected=STREAM_EXISTS)
        assert result.to_version == 2

    @pytest.mark.parametrize("wrong", [0, 1, 3, 10])
    async def test_exact_version_must_match(self, store: AsyncEventStore, wrong: int) -> None:
        await store.append("s", deposits(1, 2), expected=0)
        with pytest.raises(WrongExpectedVersion) as info:
            await store.append("s", deposits(3), expected=wrong)
        assert (info.value.expected, info.value.actual) == (wrong, 2)
        result = await store.append("s", deposits(3), expected=2)
        assert (result.from_version, result.to_version) == (3, 3)

    async def test_any_appends_whatever_the_version(self, store: AsyncEventStore) -> None:
        await store.append("s", deposits(1), expected=ANY)
        result = await store.append("s", deposits(2, 3), expected=ANY)
        assert (result.from_version, result.to_version) == (2, 3)

    async def test_empty_batch_checks_but_writes_nothing(self, store: AsyncEventStore) -> None:
        await store.append("s", deposits(1))
        before = await store.last_position()
        result = await store.append("s", [], expected=1)
        assert (result.from_version, result.to_version, result.position) == (2, 1, 0)
        with pytest.raises(WrongExpectedVersion):
            await store.append("s", [], expected=NO_STREAM)
        assert await store.last_position() == before

    # -- atomicity and validation ----------------------------------------------------------

    async def test_failing_batch_leaves_nothing(self, store: AsyncEventStore) -> None:
        await store.append("other", deposits(1))
        before = await store.last_position()
        bad = [Deposited(amount=1), Unserialisable(payload=object()), Deposited(amount=2)]
        with pytest.raises(SerializationError):
            await store.append("s", bad)
        assert await store.get_stream("s") is None
        assert await store.last_position() == before
        with pytest.raises(WrongExpectedVersion):
            await store.append("other", deposits(1, 2, 3), expected=5)
        assert [e.version for e in await async_collect(store.read("other"))] == [1]

    async def test_unencodable_metadata_is_rejected(self, store: AsyncEventStore) -> None:
        with pytest.raises(SerializationError):
            await store.append("s", [NewEvent(data=Deposited(amount=1), metadata={"x": object()})])
        assert await store.get_stream("s") is None

    @pytest.mark.parametrize("name", ["", " lead", "trail ", "nul\x00", "new\nline", 42, "x" * 513])
    async def test_malformed_stream_names(self, store: AsyncEventStore, name: Any) -> None:
        with pytest.raises(InvalidRequest):
            await store.append(name, deposits(1))
        with pytest.raises(InvalidRequest):
            await async_collect(store.read(name))
        assert await store.last_position() == 0

    @pytest.mark.parametrize("expected", [-1, True, "1", 1.0, None])
    async def test_malformed_expected(self, store: AsyncEventStore, expected: Any) -> None:
        with pytest.raises(InvalidRequest):
            await store.append("s", deposits(1), expected=expected)
        assert await store.get_stream("s") is None

    async def test_malformed_read_arguments(self, store: AsyncEventStore) -> None:
        await store.append("s", deposits(1))
        bad_reads: list[dict[str, Any]] = [{"from_version": 0}, {"from_version": -3}, {"limit": -1}]
        for kwargs in bad_reads:
            with pytest.raises(InvalidRequest):
                await async_collect(store.read("s", **kwargs))
        bad_read_alls: list[dict[str, Any]] = [
            {"after": -1},
            {"limit": -2},
            {"types": "Deposited"},
            {"stream_prefix": ""},
        ]
        for kwargs in bad_read_alls:
            with pytest.raises(InvalidRequest):
                await async_collect(store.read_all(**kwargs))

    async def test_events_must_be_a_sequence(self, store: AsyncEventStore) -> None:
        with pytest.raises(InvalidRequest):
            await store.append("s", Deposited(amount=1))  # type: ignore[arg-type]
        with pytest.raises(SerializationError):
            await store.append("s", [{"amount": 1}])
        assert await store.last_position() == 0

    # -- nothing is written that cannot be read back -------------------------------------

    async def _refused(self, store: AsyncEventStore, events: list[Any], field: str) -> InvalidEvent:
        """Append ``events`` to a fresh stream; check the refusal and that nothing was written."""
        await store.append("kept", deposits(1))
        before = await async_collect(store.read_all())
        with pytest.raises(InvalidEvent) as info:
            await store.append("s", events)
        assert info.value.field == field
        assert field in str(info.value)
        assert await store.get_stream("s") is None
        assert await async_collect(store.read_all()) == before
        return info.value

    async def test_field_of_another_type_is_refused(self, store: AsyncEventStore) -> None:
        error = await self._refused(store, [Received(quantity=2.5)], "quantity")  # type: ignore[arg-type]
        assert error.event_type == "eventfold.testing.Received"
        assert "int" in error.problem
        # the whole batch is refused, also when the bad event is not the first
        await self._refused(store, [Received(quantity=1), Received(quantity="2")], "quantity")  # type: ignore[arg-type]

    @pytest.mark.parametrize("metadata", [[1], "abc", 5, b"x", (1,), {1}, None])
    async def test_metadata_that_is_not_a_mapping_is_refused(
        self, store: AsyncEventStore, metadata: Any
    ) -> None:
        error = await self._refused(
            store, [NewEvent(data=Deposited(amount=1), metadata=metadata)], "metadata"
        )
        assert "mapping" in error.problem

    @pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
    async def test_nan_and_infinity_are_refused(self, store: AsyncEventStore, value: float) -> None:
        await self._refused(store, [Measured(value=value)], "value")
        await self._refused(store, [Measured(value=1.0, previous=value)], "previous")
        await self._refused(store, [Unserialisable(payload={"xs": [1.0, value]})], "payload.xs[1]")
        meta = {"reading": value}
        await self._refused(
            store, [NewEvent(data=Deposited(amount=1), metadata=meta)], "metadata.reading"
        )

    @pytest.mark.parametrize("key", [1, b"k", 2.5, (1, 2)])
    async def test_metadata_keys_must_be_str(self, store: AsyncEventStore, key: Any) -> None:
        meta = {key: "a"}
        await self._refused(store, [NewEvent(data=Deposited(amount=1), metadata=meta)], "metadata")
        nested = {"outer": {key: "a"}}
        await self._refused(
            store, [NewEvent(data=Deposited(amount=1), metadata=nested)], "metadata.outer"
        )

    @pytest.mark.parametrize(
        "payload",
        [b"raw", (1, 2), datetime(2026, 1, 1, tzinfo=UTC), uuid4(), {"k": (1,)}, {1, 2}],
    )
    async def test_values_that_would_read_back_as_another_type_are_refused(
        self, store: AsyncEventStore, payload: Any
    ) -> None:
        error = await self._refused(store, [Unserialisable(payload=payload)], error_field(payload))
        assert "read back" in error.problem

    async def test_values_that_read_back_equal_are_accepted(self, store: AsyncEventStore) -> None:
        fine: list[object] = [
            Unserialisable(payload={"a": [1, "x", None, True, 2.5, {"b": []}]}),
            Measured(value=3),  # an int in a float field reads back as an equal float
            Measured(value=-0.0, previous=None),
        ]
        meta = {"correlation_id": "c", "nested": {"n": [1, 2.0]}}
        await store.append("s", [*fine, NewEvent(data=Deposited(amount=1), metadata=meta)])
        events = await async_collect(store.read("s"))
        assert [e.data for e in events[:3]] == fine
        assert dict(events[3].metadata) == meta

    async def test_too_deeply_nested_events_are_refused(self, store: AsyncEventStore) -> None:
        deep: Any = []
        for _ in range(5000):
            deep = [deep]
        await store.append("kept", deposits(1))
        with pytest.raises(InvalidEvent) as info:
            await store.append("s", [Unserialisable(payload=deep)])
        assert "deep" in str(info.value)
        meta: Any = {}
        for _ in range(5000):
            meta = {"m": meta}
        with pytest.raises(InvalidEvent):
            await store.append("s", [NewEvent(data=Deposited(amount=1), metadata=meta)])
        assert await store.get_stream("s") is None

    async def test_stream_metadata_follows_the_same_rule(self, store: AsyncEventStore) -> None:
        bad: list[Any] = [[1], {"k": float("nan")}, {1: "a"}, {"t": (1,)}]
        for metadata in bad:
            with pytest.raises(InvalidRequest) as info:
                await store.set_stream_metadata("s", metadata)
            assert "metadata" in str(info.value)
        assert await store.get_stream("s") is None

    async def test_recorded_events_are_not_event_data(self, store: AsyncEventStore) -> None:
        await store.append("a", deposits(1))
        (recorded,) = await async_collect(store.read("a"))
        with pytest.raises(InvalidRequest) as info:
            await store.append("b", [recorded])
        assert "NewEvent(data=event.data" in str(info.value)
        with pytest.raises(InvalidRequest):
            await store.append("b", [NewEvent(data=NewEvent(data=Deposited(amount=1)))])
        assert await store.get_stream("b") is None

    # -- arguments: flags take bools, integers stay in range ------------------------------

    @pytest.mark.parametrize("flag", ["no", "false", 1, 0, None, ""])
    async def test_flags_take_bools_only(self, store: AsyncEventStore, flag: Any) -> None:
        await store.append("s", deposits(1, 2))
        with pytest.raises(InvalidRequest) as info:
            await store.delete_stream("s", hard=flag)
        assert "hard" in str(info.value)
        with pytest.raises(InvalidRequest) as info:
            await async_collect(store.read("s", backwards=flag))
        assert "backwards" in str(info.value)
        info_after = await store.get_stream("s")
        assert info_after is not None and info_after.deleted is None
        assert len(await async_collect(store.read("s"))) == 2

    async def test_versions_beyond_64_bits_are_invalid(self, store: AsyncEventStore) -> None:
        await store.append("s", deposits(1))
        await store.save_snapshot("s", 1, "T", 1, b"{}")
        huge = 2**63
        calls: list[tuple[str, Any]] = [
            ("from_version", lambda: async_collect(store.read("s", from_version=huge))),
            ("max_version", lambda: store.load_snapshot("s", max_version=huge)),
            ("version", lambda: store.save_snapshot("s", huge, "T", 1, b"{}")),
            ("schema_version", lambda: store.save_snapshot("s", 1, "T", huge, b"{}")),
            ("before_version", lambda: store.truncate_stream("s", huge)),
        ]
        for name, call in calls:
            with pytest.raises(InvalidRequest) as info:
                await call()
            assert name in str(info.value)
        assert [
            e.version for e in await async_collect(store.read("s", from_version=huge - 1))
        ] == []
        snapshot = await store.load_snapshot("s", max_version=huge - 1)
        assert snapshot is not None and snapshot.version == 1

    async def test_positions_beyond_the_log_read_nothing(self, store: AsyncEventStore) -> None:
        await store.append("s", deposits(1))
        assert await async_collect(store.read_all(after=2**200)) == []
        assert await async_collect(store.read_all(after=2**63)) is not None  # no error
        assert len(await async_collect(store.read_all(limit=2**70))) == 1

    # -- reading what cannot be decoded ----------------------------------------------------

    async def test_read_errors_name_stream_version_and_position(
        self, store: AsyncEventStore
    ) -> None:
        result = await store.append("acc-7", [Received(quantity=3)])
        other = TypeRegistry()

        class Changed(msgspec.Struct, frozen=True):
            quantity: str  # a release changed the field's type, without an upcaster

        other.register(Changed, name="eventfold.testing.Received")
        store.serializer = Serializer(other)
        for reader in (store.read("acc-7"), store.read_all()):
            with pytest.raises(SerializationError) as info:
                await async_collect(reader)
            error = info.value
            assert (error.stream, error.version, error.position) == ("acc-7", 1, result.position)
            assert f"position {result.position}" in str(error)
            assert "acc-7" in str(error)
            assert "quantity" in str(error)

    async def test_a_failing_upcaster_raises_serialization_error(
        self, store: AsyncEventStore
    ) -> None:
        result = await store.append("acc-8", [Received(quantity=3)])
        other = TypeRegistry()

        class ReceivedV2(msgspec.Struct, frozen=True):
            amount: int

        other.register(ReceivedV2, name="eventfold.testing.Received", version=2)

        @other.upcaster("eventfold.testing.Received", 1)
        def broken(payload: dict[str, Any]) -> dict[str, Any]:
            return {"amount": payload["amount"]}  # KeyError: the v1 field is "quantity"

        store.serializer = Serializer(other)
        with pytest.raises(SerializationError) as info:
            await async_collect(store.read("acc-8"))
        error = info.value
        assert isinstance(error.__cause__, KeyError)
        assert error.position == result.position
        for part in ("eventfold.testing.Received", "schema version 1", "acc-8", "KeyError"):
            assert part in str(error)

    async def test_pydantic_models_are_events_like_the_others(self, store: AsyncEventStore) -> None:
        models = pytest.importorskip("eventfold.testing._pydantic_events")  # eventfold[pydantic]
        at = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)
        parcels = (models.Parcel(weight=2.5), models.Parcel(weight=1.0))
        shipped = models.Shipped(order="o-1", carrier="post", at=at, parcels=parcels)
        result = await store.append("order-1", [shipped])  # no registration: on first use
        (event,) = await async_collect(store.read("order-1"))
        assert event.data == shipped and type(event.data) is models.Shipped
        assert (event.type, event.schema_version) == ("eventfold.testing.Shipped", 2)
        assert event.position == result.position
        # Validated at append like a Struct: refused with the field named, nothing stored.
        nan = models.Shipped(
            order="o-2", carrier="post", at=at, parcels=(models.Parcel(weight=float("nan")),)
        )
        await self._refused(store, [nan], "parcels[0].weight")
        wrong = models.Shipped.model_construct(order=2, carrier="post", at=at, parcels=())
        await self._refused(store, [wrong], "order")

    async def test_pydantic_models_are_upcast_like_the_others(self, store: AsyncEventStore) -> None:
        models = pytest.importorskip("eventfold.testing._pydantic_events")
        at = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)
        old = TypeRegistry()
        old.register(models.ShippedV1, name="eventfold.testing.Shipped", version=1)
        store.serializer = Serializer(old)
        await store.append("order-2", [models.ShippedV1(order="o-2", at=at)])
        new = TypeRegistry()
        new.register(models.Shipped)

        @new.upcaster("eventfold.testing.Shipped", 1)
        def add_carrier(payload: dict[str, Any]) -> dict[str, Any]:
            return {**payload, "carrier": "unknown"}

        store.serializer = Serializer(new)
        (event,) = await async_collect(store.read("order-2"))
        assert event.data == models.Shipped(order="o-2", carrier="unknown", at=at)
        assert event.schema_version == 1  # as stored: nothing was rewritten

        @new.upcaster("eventfold.testing.Shipped", 1)
        def broken(payload: dict[str, Any]) -> dict[str, Any]:
            return {**payload, "carrier": 5}  # not a str: the model refuses it

        store.serializer = Serializer(new)
        with pytest.raises(SerializationError) as info:
            await async_collect(store.read("order-2"))
        assert "carrier" in str(info.value) and "order-2" in str(info.value)

    async def test_unknown_event_type_on_read(self, store: AsyncEventStore) -> None:
        await store.append("acc-9", deposits(1))
        store.serializer = Serializer(TypeRegistry())
        with pytest.raises(UnknownEventType) as info:
            await async_collect(store.read("acc-9"))
        assert info.value.type_name == "eventfold.testing.Deposited"
        assert info.value.stream == "acc-9"
        raw = Serializer(TypeRegistry(), on_unknown="raw")
        store.serializer = raw
        assert [e.data for e in await async_collect(store.read("acc-9"))] == [{"amount": 1}]

    async def test_closed_store_raises(self, store: AsyncEventStore) -> None:
        await store.append("s", deposits(1))
        await store.close()
        with pytest.raises(StoreClosed):
            await store.append("s", deposits(2))
        with pytest.raises(StoreClosed):
            await async_collect(store.read("s"))
        with pytest.raises(StoreClosed):
            await async_collect(store.read_all())
        await store.close()

    # -- idempotency ----------------------------------------------------------------------

    async def test_append_is_idempotent_by_event_id(self, store: AsyncEventStore) -> None:
        batch = [NewEvent(data=d) for d in deposits(1, 2)]
        first = await store.append("s", batch, expected=NO_STREAM)
        await store.append("s", deposits(3))
        again = await store.append("s", batch, expected=NO_STREAM)
        assert again == first
        again_any = await store.append("s", batch)
        assert again_any == first
        assert [e.id for e in await async_collect(store.read("s", limit=2))] == [
            e.id for e in batch
        ]
        assert (await store.get_stream("s")) is not None
        assert len(await async_collect(store.read("s"))) == 3

    async def test_reused_event_id_is_rejected(self, store: AsyncEventStore) -> None:
        event = NewEvent(data=Deposited(amount=1))
        await store.append("a", [event])
        before = await store.last_position()
        with pytest.raises(InvalidRequest):
            await store.append("b", [event])
        with pytest.raises(InvalidRequest):
            await store.append("a", [event, NewEvent(data=Deposited(amount=2))])
        dup = NewEvent(data=Deposited(amount=3))
        with pytest.raises(InvalidRequest):
            await store.append("c", [dup, dup])
        assert await store.last_position() == before
        assert await store.get_stream("b") is None

    async def test_ids_metadata_and_time_are_recorded(self, store: AsyncEventStore) -> None:
        event_id = uuid7()
        meta = {"correlation_id": "c-1", "causation_id": "k-9", "user": {"id": 7}}
        before = datetime.now(UTC) - timedelta(seconds=5)
        await store.append("s", [NewEvent(data=Opened(owner="ann"), id=event_id, metadata=meta)])
        await store.append("s", deposits(1))
        first, second = await async_collect(store.read("s"))
        assert first.id == event_id
        assert dict(first.metadata) == meta
        assert dict(second.metadata) == {}
        assert isinstance(second.id, UUID)
        assert second.id.version == 7
        assert before <= first.recorded_at <= datetime.now(UTC) + timedelta(seconds=5)
        assert first.recorded_at.tzinfo is not None
        assert first.schema_version == 1

    # -- reading ----------------------------------------------------------------------------

    async def test_read_from_version_limit_backwards_and_paging(
        self, store: AsyncEventStore
    ) -> None:
        store.page_size = 3
        await store.append("s", deposits(*range(1, 11)))
        await store.append("t", deposits(100))

        async def versions(**kwargs: Any) -> list[int]:
            return [e.version for e in await async_collect(store.read("s", **kwargs))]

        assert await versions() == list(range(1, 11))
        assert await versions(from_version=4) == list(range(4, 11))
        assert await versions(from_version=4, limit=5) == [4, 5, 6, 7, 8]
        assert await versions(backwards=True) == list(range(10, 0, -1))
        assert await versions(backwards=True, from_version=5, limit=3) == [5, 4, 3]
        assert await versions(from_version=11) == []
        assert await versions(limit=0) == []
        assert await versions(backwards=True, from_version=99, limit=2) == [10, 9]

    async def test_read_between_two_versions(self, store: AsyncEventStore) -> None:
        store.page_size = 2
        await store.append("s", deposits(*range(1, 11)))
        await store.append("t", deposits(100))

        async def versions(**kwargs: Any) -> list[int]:
            return [e.version for e in await async_collect(store.read("s", **kwargs))]

        assert await versions(to_version=4) == [1, 2, 3, 4]
        assert await versions(from_version=3, to_version=7) == [3, 4, 5, 6, 7]
        assert await versions(from_version=3, to_version=7, limit=2) == [3, 4]
        assert await versions(from_version=5, to_version=5) == [5]
        assert await versions(from_version=7, to_version=3) == []
        assert await versions(to_version=99) == list(range(1, 11))
        assert await versions(backwards=True, to_version=8) == [10, 9, 8]
        assert await versions(backwards=True, from_version=9, to_version=5) == [9, 8, 7, 6, 5]
        assert await versions(backwards=True, from_version=3, to_version=7) == []
        # After a truncation the stream starts later than a bound may say.
        await store.truncate_stream("s", 6)
        assert await versions(to_version=8) == [6, 7, 8]
        assert await versions(to_version=5) == []
        assert await versions(backwards=True, from_version=8, to_version=2) == [8, 7, 6]
        with pytest.raises(InvalidRequest, match="to_version"):
            await versions(to_version=0)

    async def test_read_all_up_to_a_position(self, store: AsyncEventStore) -> None:
        store.page_size = 2
        for i in range(4):
            await store.append(f"acc-{i}", [Opened(owner=str(i)), Deposited(amount=i)])
        every = await async_collect(store.read_all())
        positions = [e.position for e in every]
        assert await async_collect(store.read_all(to_position=positions[4])) == every[:5]
        assert (
            await async_collect(store.read_all(after=positions[1], to_position=positions[4]))
            == every[2:5]
        )
        assert await async_collect(store.read_all(to_position=positions[-1] + 10**6)) == every
        assert (
            await async_collect(store.read_all(after=positions[4], to_position=positions[4])) == []
        )
        assert await async_collect(store.read_all(to_position=0)) == []
        filtered = store.read_all(types=["eventfold.testing.Deposited"], to_position=positions[4])
        assert [e.data for e in await async_collect(filtered)] == deposits(0, 1)
        limited = store.read_all(to_position=positions[6], limit=3)
        assert await async_collect(limited) == every[:3]
        with pytest.raises(InvalidRequest, match="to_position"):
            await async_collect(store.read_all(to_position=-1))

    async def test_append_returns_the_position_of_every_event(self, store: AsyncEventStore) -> None:
        first = await store.append("a", deposits(1, 2, 3))
        await store.append("b", deposits(4))
        second = await store.append("a", deposits(5, 6))
        single = await store.append("c", deposits(7))
        logged = {(e.stream, e.version): e.position for e in await async_collect(store.read_all())}
        assert first.positions == (logged["a", 1], logged["a", 2], logged["a", 3])
        assert second.positions == (logged["a", 4], logged["a", 5])
        assert single.positions == (logged["c", 1],) == (await store.last_position(),)
        for result in (first, second, single):
            assert result.position == result.positions[-1]
            assert len(result.positions) == result.to_version - result.from_version + 1
        empty = await store.append("a", [])
        assert (empty.positions, empty.position) == ((), 0)
        # A retried batch answers with the positions it was stored at.
        batch = [NewEvent(data=d) for d in deposits(8, 9)]
        stored = await store.append("d", batch)
        await store.append("d", deposits(10))
        assert (await store.append("d", batch)).positions == stored.positions

    # -- atomic multi-stream appends ------------------------------------------------------
    # What was written is read stream by stream: read_all may lag behind a
    # commit (on PostgreSQL, while any older transaction of the server runs).

    async def _events_of(self, store: AsyncEventStore, *streams: str) -> list[RecordedEvent]:
        """Every event of ``streams``, in the order of the log (by position)."""
        events = [e for stream in streams for e in await async_collect(store.read(stream))]
        return sorted(events, key=lambda e: e.position)

    async def test_append_many_writes_every_stream_at_once(self, store: AsyncEventStore) -> None:
        await store.append("a", deposits(1))
        results = await store.append_many(
            [
                StreamAppend("a", deposits(2, 3), expected=1),
                StreamAppend("b", deposits(4), expected=NO_STREAM),
                StreamAppend("c", deposits(5, 6)),
            ]
        )
        assert [(r.stream, r.from_version, r.to_version) for r in results] == [
            ("a", 2, 3),
            ("b", 1, 1),
            ("c", 1, 2),
        ]
        every = await self._events_of(store, "a", "b", "c")
        logged = {(e.stream, e.version): e.position for e in every}
        for result in results:
            versions = range(result.from_version, result.to_version + 1)
            assert result.positions == tuple(logged[result.stream, v] for v in versions)
            assert result.position == result.positions[-1]
        # The call's events are stored together, after what was there before.
        assert (every[0].stream, every[0].version) == ("a", 1)
        assert sorted(p for r in results for p in r.positions) == [e.position for e in every[1:]]
        assert [e.data for e in every if e.stream == "a"] == deposits(1, 2, 3)
        assert [e.data for e in every if e.stream == "c"] == deposits(5, 6)
        assert await store.append_many([]) == []
        assert await self._events_of(store, "a", "b", "c") == every

    async def test_append_many_with_a_failing_expectation_writes_nothing(
        self, store: AsyncEventStore
    ) -> None:
        await store.append("a", deposits(1))
        await store.append("b", deposits(1, 2))
        before = await self._events_of(store, "a", "b")
        with pytest.raises(WrongExpectedVersion) as info:
            await store.append_many(
                [
                    StreamAppend("a", deposits(9), expected=1),
                    StreamAppend("b", deposits(9), expected=1),
                ]
            )
        assert (info.value.stream, info.value.expected, info.value.actual) == ("b", 1, 2)
        # Several fail: the first in the order given is named.
        with pytest.raises(WrongExpectedVersion) as info:
            await store.append_many(
                [
                    StreamAppend("new", deposits(9), expected=NO_STREAM),
                    StreamAppend("b", deposits(9), expected=STREAM_EXISTS),
                    StreamAppend("z", deposits(9), expected=STREAM_EXISTS),
                    StreamAppend("a", deposits(9), expected=NO_STREAM),
                ]
            )
        assert (info.value.stream, info.value.actual) == ("z", 0)
        # An empty batch checks its stream's expectation: a guard on another stream.
        with pytest.raises(WrongExpectedVersion) as info:
            await store.append_many(
                [StreamAppend("a", deposits(9), expected=1), StreamAppend("b", [], expected=1)]
            )
        assert info.value.stream == "b"
        assert await self._events_of(store, "a", "b") == before
        assert await store.get_stream("new") is None
        assert await store.get_stream("z") is None
        guarded = await store.append_many(
            [StreamAppend("a", deposits(9), expected=1), StreamAppend("b", [], expected=2)]
        )
        assert [(r.from_version, r.to_version, r.positions) for r in guarded[1:]] == [(3, 2, ())]
        (_, written) = await async_collect(store.read("a"))
        assert (guarded[0].to_version, guarded[0].positions) == (2, (written.position,))

    async def test_append_many_to_a_deleted_stream_writes_nothing(
        self, store: AsyncEventStore
    ) -> None:
        await store.append("a", deposits(1))
        await store.append("gone", deposits(1))
        await store.append("erased", deposits(1))
        await store.delete_stream("gone")
        await store.delete_stream("erased", hard=True)
        for stream, hard in (("gone", False), ("erased", True)):
            with pytest.raises(StreamDeleted) as info:
                await store.append_many(
                    [StreamAppend("a", deposits(2), expected=1), StreamAppend(stream, deposits(2))]
                )
            assert (info.value.stream, info.value.hard) == (stream, hard)
            deleted = await store.get_stream(stream)
            assert deleted is not None and deleted.version == 1
        assert [e.version for e in await async_collect(store.read("a"))] == [1]
        await store.restore_stream("gone")
        assert [e.version for e in await async_collect(store.read("gone"))] == [1]

    async def test_append_many_refuses_a_stream_named_twice_and_bad_parts(
        self, store: AsyncEventStore
    ) -> None:
        shared = NewEvent(data=Deposited(amount=1))
        refused: list[list[Any]] = [
            [StreamAppend("a", deposits(1)), StreamAppend("b", []), StreamAppend("a", deposits(2))],
            [StreamAppend("a", [shared]), StreamAppend("b", [shared])],
            [StreamAppend("a", deposits(1)), ("b", deposits(2))],
            [StreamAppend("a", deposits(1)), StreamAppend("", deposits(2))],
            [StreamAppend("a", deposits(1)), StreamAppend("b", deposits(2), expected=-1)],
            [StreamAppend("a", deposits(1)), StreamAppend("b", Deposited(amount=2))],  # type: ignore[arg-type]
        ]
        for appends in refused:
            with pytest.raises(InvalidRequest):
                await store.append_many(appends)
        with pytest.raises(InvalidRequest) as info:
            await store.append_many(refused[0])
        assert "'a'" in str(info.value) and "twice" in str(info.value)
        for not_a_list in (StreamAppend("a", deposits(1)), "a", None):
            with pytest.raises(InvalidRequest) as info:
                await store.append_many(not_a_list)  # type: ignore[arg-type]
            assert "appends" in str(info.value)
        assert await store.get_stream("a") is None
        assert await store.get_stream("b") is None
        assert await store.last_position() == 0

    async def test_append_many_retried_returns_the_original_results(
        self, store: AsyncEventStore
    ) -> None:
        call = [
            StreamAppend("a", [NewEvent(data=d) for d in deposits(1, 2)], expected=NO_STREAM),
            StreamAppend("b", [NewEvent(data=d) for d in deposits(3)], expected=NO_STREAM),
        ]
        first = await store.append_many(call)
        await store.append("a", deposits(4))  # the expectations no longer hold
        stored = await self._events_of(store, "a", "b")
        assert await store.append_many(call) == first
        assert await store.append_many(call[::-1]) == first[::-1]
        assert await self._events_of(store, "a", "b") == stored
        # Only some batches stored: ids reused, not a retry.
        with pytest.raises(InvalidRequest):
            await store.append_many([call[0], StreamAppend("c", deposits(5))])
        assert await store.get_stream("c") is None
        assert await self._events_of(store, "a", "b") == stored

    async def test_concurrent_append_many_is_never_applied_in_part(
        self, store: AsyncEventStore
    ) -> None:
        streams = ["m0", "m1", "m2"]
        for stream in streams:
            await store.append(stream, deposits(0))
        applied: list[int] = []

        async def writer(n: int) -> None:
            for i in range(6):
                call = n * 100 + i
                # Overlapping streams, in both orders; exact versions or ANY.
                chosen = [streams[(n + i) % 3], streams[(n + i + 1) % 3]][:: 1 if n % 2 else -1]
                appends = []
                for stream in chosen:
                    info = await store.get_stream(stream)
                    version = info.version if info is not None and i % 2 else ANY
                    appends.append(StreamAppend(stream, deposits(call, call), expected=version))
                try:
                    await store.append_many(appends)
                except WrongExpectedVersion:
                    continue
                applied.append(call)

        writers = [writer(n) for n in range(1, 5)]  # unasync: remove
        await asyncio.gather(*writers)  # unasync: for n in range(1, 5): writer(n)

        every = await self._events_of(store, *streams)
        calls: dict[int, list[RecordedEvent]] = {}
        for event in every:
            if event.data.amount:
                calls.setdefault(event.data.amount, []).append(event)
        assert sorted(calls) == sorted(applied)
        positions = [e.position for e in every]
        for call, events in calls.items():
            # Two events in each of two streams, stored together in the log.
            assert len(events) == 4 and len({e.stream for e in events}) == 2, call
            first = positions.index(events[0].position)
            assert every[first : first + 4] == events, call
        for stream in streams:
            versions = [e.version for e in every if e.stream == stream]
            assert versions == list(range(1, len(versions) + 1))

    async def test_snapshots_of_a_stream_are_listed(self, store: AsyncEventStore) -> None:
        await store.append("s", deposits(1, 2, 3))
        assert await store.list_snapshots("s") == []
        await store.save_snapshot("s", 3, "acc", 1, b"three")
        await store.save_snapshot("s", 1, "acc", 1, b"one")
        await store.save_snapshot("other", 1, "acc", 1, b"x")
        listed = await store.list_snapshots("s")
        assert [(n.stream, n.version, n.data) for n in listed] == [
            ("s", 1, b"one"),
            ("s", 3, b"three"),
        ]
        assert listed[-1] == await store.load_snapshot("s")
        assert await store.delete_snapshots("s") == 2
        assert await store.list_snapshots("s") == []
        with pytest.raises(InvalidRequest):
            await store.list_snapshots("")

    async def test_read_missing_stream_is_empty(self, store: AsyncEventStore) -> None:
        assert await async_collect(store.read("nope")) == []
        assert await store.get_stream("nope") is None

    async def test_read_all_order_paging_and_filters(self, store: AsyncEventStore) -> None:
        store.page_size = 4
        expected_streams = []
        for i in range(6):
            stream = f"{'acc' if i % 2 else 'order'}-{i}"
            events: list[object] = [Opened(owner=str(i)), Deposited(amount=i)]
            if i % 3 == 0:
                events.append(Withdrawn(amount=1))
            await store.append(stream, events)
            expected_streams += [stream] * len(events)
        every = await async_collect(store.read_all())
        positions = [e.position for e in every]
        assert positions == sorted(set(positions))
        assert [e.stream for e in every] == expected_streams
        assert await store.last_position() == positions[-1]
        after = positions[3]
        assert await async_collect(store.read_all(after=after)) == every[4:]
        assert await async_collect(store.read_all(after=after, limit=5)) == every[4:9]
        deposits_only = await async_collect(store.read_all(types=["eventfold.testing.Deposited"]))
        assert [e.data.amount for e in deposits_only] == list(range(6))
        acc = await async_collect(store.read_all(stream_prefix="acc-"))
        assert acc == [e for e in every if e.stream.startswith("acc-")]
        both = await async_collect(
            store.read_all(types=["eventfold.testing.Withdrawn"], stream_prefix="acc-", limit=9)
        )
        assert [e.stream for e in both] == ["acc-3"]
        assert await async_collect(store.read_all(types=[])) == []
        assert await async_collect(store.read_all(after=positions[-1])) == []

    async def test_subscribe_catches_up_then_delivers_new_events(
        self, store: AsyncEventStore
    ) -> None:
        store.page_size = 2
        await store.append("acc-1", [*deposits(1, 2), Withdrawn(amount=1)])
        await store.append("other", deposits(3))
        subscription = store.subscribe(
            types=["eventfold.testing.Deposited"], stream_prefix="acc-", poll_interval=0.05
        )
        caught_up = [await subscription.__anext__(), await subscription.__anext__()]
        assert [(e.stream, e.data) for e in caught_up] == [("acc-1", d) for d in deposits(1, 2)]
        # Appended while the subscriber is between events: the skipped ones
        # are passed over, the wanted one arrives, in log order.
        await store.append("other", deposits(4))
        await store.append("acc-1", [Withdrawn(amount=2)])
        latest = await store.append("acc-2", deposits(5))
        live = await subscription.__anext__()
        assert (live.stream, live.data, live.position) == (
            "acc-2",
            Deposited(amount=5),
            latest.position,
        )
        await subscription.aclose()
        # From a checkpoint: only what came after it.
        again = store.subscribe(after=caught_up[-1].position, types=["eventfold.testing.Deposited"])
        assert (await again.__anext__()).data == Deposited(amount=3)
        await again.aclose()

    async def test_subscribe_ends_when_stop_is_set_while_it_waits(
        self, store: AsyncEventStore
    ) -> None:
        await store.append("s", deposits(1, 2))
        stop = asyncio.Event()  # unasync: stop = threading.Event()
        subscription = store.subscribe(poll_interval=60, stop=stop)
        got = [await subscription.__anext__(), await subscription.__anext__()]
        # Set from elsewhere while the subscription waits for news (or before
        # it starts waiting: either way it must end, having lost nothing).
        later = asyncio.get_running_loop().call_later  # unasync: remove
        later(0.05, stop.set)  # unasync: threading.Timer(0.05, stop.set).start()
        rest = await async_within_seconds(30, lambda: async_collect(subscription))
        assert [e.data for e in got] == deposits(1, 2)
        assert rest == []
        # A store that was followed is still open and usable.
        assert (await store.append("s", deposits(3))).to_version == 3

    async def test_subscribe_stops_right_after_the_event_being_handled(
        self, store: AsyncEventStore
    ) -> None:
        await store.append("s", deposits(1, 2, 3))
        stop = asyncio.Event()  # unasync: stop = threading.Event()
        seen = []
        async for event in store.subscribe(stop=stop):
            seen.append(event.data)
            stop.set()
        assert seen == deposits(1)
        # Set before the subscription starts: it delivers nothing.
        assert await async_collect(store.subscribe(stop=stop)) == []

    async def test_malformed_subscribe_arguments(self, store: AsyncEventStore) -> None:
        bad: list[dict[str, Any]] = [
            {"after": -1},
            {"types": "Deposited"},
            {"stream_prefix": ""},
            {"poll_interval": 0},
            {"poll_interval": "1"},
            {"stop": True},
            {"stop": "now"},
        ]
        for kwargs in bad:
            with pytest.raises(InvalidRequest):
                await store.subscribe(**kwargs).__anext__()

    async def test_stream_metadata(self, store: AsyncEventStore) -> None:
        await store.set_stream_metadata("s", {"owner": "ann", "retention_days": 30})
        assert await store.get_stream("s") is None
        await store.append("s", deposits(1, 2))
        info = await store.get_stream("s")
        assert info is not None
        assert (info.stream, info.version) == ("s", 2)
        assert dict(info.metadata) == {"owner": "ann", "retention_days": 30}
        await store.set_stream_metadata("s", {})
        info = await store.get_stream("s")
        assert info is not None
        assert dict(info.metadata) == {}

    # -- concurrency ------------------------------------------------------------------------

    async def test_concurrent_appends_to_one_stream(self, store: AsyncEventStore) -> None:
        await store.append("hot", deposits(0))

        async def writer(n: int) -> int:
            conflicts = 0
            for _ in range(10):
                while True:
                    events = await async_collect(store.read("hot", backwards=True, limit=1))
                    try:
                        await store.append("hot", deposits(n), expected=events[0].version)
                        break
                    except WrongExpectedVersion:
                        conflicts += 1
            return conflicts

        writers = [writer(n) for n in range(1, 5)]  # unasync: remove
        await asyncio.gather(*writers)  # unasync: for n in range(1, 5): writer(n)

        events = await async_collect(store.read("hot"))
        assert [e.version for e in events] == list(range(1, 42))
        assert sorted(e.data.amount for e in events[1:]) == sorted(list(range(1, 5)) * 10)
        assert len({e.id for e in events}) == 41

    async def test_recorded_events_are_immutable(self, store: AsyncEventStore) -> None:
        await store.append("s", deposits(1))
        (event,) = await async_collect(store.read("s"))
        assert isinstance(event, RecordedEvent)
        with pytest.raises(AttributeError):
            event.version = 9  # type: ignore[misc]
