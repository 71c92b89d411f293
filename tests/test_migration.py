"""Offline stream migration and the remaining schema-evolution cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from eventfold import (
    AsyncMemoryEventStore,
    InvalidRequest,
    MemoryEventStore,
    NewEvent,
    Serializer,
    SqliteEventStore,
    TypeRegistry,
    WrongExpectedVersion,
)
from eventfold.evolution import MIGRATED_FROM, async_migrate_stream, migrate_stream


class NameSetV1(msgspec.Struct, frozen=True):
    first: str
    last: str


class NameSet(msgspec.Struct, frozen=True):
    full_name: str
    nickname: str = ""  # added in v3 with a default: old data needs no upcaster


def old_and_new_registries() -> tuple[TypeRegistry, TypeRegistry]:
    old = TypeRegistry()
    old.register(NameSetV1, name="NameSet", version=1)
    new = TypeRegistry()
    new.register(NameSet, name="NameSet", version=2)

    @new.upcaster("NameSet", 1)
    def merge(data: dict[str, Any]) -> dict[str, Any]:
        # Two fields merged into one.
        return {"full_name": f"{data['first']} {data['last']}"}

    return old, new


def test_added_field_with_default_and_merged_fields(tmp_path: Path) -> None:
    old, new = old_and_new_registries()
    path = tmp_path / "people.db"
    with SqliteEventStore(path, serializer=Serializer(old)) as store:
        store.append("person-1", [NameSetV1("Ada", "Lovelace"), NameSetV1("Ada", "King")])
    with SqliteEventStore(path, serializer=Serializer(new)) as store:
        events = list(store.read("person-1"))
    assert [e.data for e in events] == [NameSet("Ada Lovelace"), NameSet("Ada King")]
    assert {e.schema_version for e in events} == {1}


def test_migrate_stream_stores_upcast_events_and_keeps_the_source(tmp_path: Path) -> None:
    old, new = old_and_new_registries()
    path = tmp_path / "people.db"
    with SqliteEventStore(path, serializer=Serializer(old)) as store:
        store.append(
            "person-1",
            [NewEvent(data=NameSetV1("Ada", "Lovelace"), metadata={"user": "clerk"})]
            + [NameSetV1("Ada", str(i)) for i in range(6)],
        )
    with SqliteEventStore(path, serializer=Serializer(new)) as store:
        result = migrate_stream(store, "person-1", "person-1.v2", batch_size=3)
        assert (result.from_version, result.to_version) == (1, 7)
        copied = list(store.read("person-1.v2"))
        assert [e.data for e in copied] == [e.data for e in store.read("person-1")]
        assert {e.schema_version for e in copied} == {2}
        assert copied[0].metadata == {"user": "clerk", MIGRATED_FROM: "person-1@1"}
        assert copied[6].metadata[MIGRATED_FROM] == "person-1@7"
        assert {e.schema_version for e in store.read("person-1")} == {1}
        with pytest.raises(WrongExpectedVersion):
            migrate_stream(store, "person-1", "person-1.v2")


def test_migrate_stream_transform_and_other_store() -> None:
    source = MemoryEventStore()
    target = MemoryEventStore()
    source.append("s", [NameSet("a"), NameSet("b"), NameSet("c")])

    def drop_b(event: Any) -> Any:
        return None if event.data.full_name == "b" else NameSet(event.data.full_name.upper())

    migrate_stream(source, "s", "s", target_store=target, transform=drop_b)
    assert [e.data.full_name for e in target.read("s")] == ["A", "C"]
    with pytest.raises(InvalidRequest):
        migrate_stream(source, "s", "s")
    with pytest.raises(InvalidRequest):
        migrate_stream(source, "s", "t", batch_size=0)
    empty = migrate_stream(source, "missing", "t2")
    assert empty.to_version == 0


@pytest.mark.asyncio
async def test_async_migrate_stream() -> None:
    store = AsyncMemoryEventStore()
    await store.append("s", [NameSet(str(i)) for i in range(5)])
    result = await async_migrate_stream(store, "s", "s2", batch_size=2)
    assert result.to_version == 5
    assert [e.data async for e in store.read("s2")] == [NameSet(str(i)) for i in range(5)]
