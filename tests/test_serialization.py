"""Type registry, dataclass events, upcasters and renamed types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from eventfold import (
    ConfigurationError,
    Event,
    MemoryEventStore,
    NewEvent,
    SerializationError,
    Serializer,
    TypeRegistry,
    UnknownEventType,
    event_type,
    uuid7,
)


@event_type("tests.ParcelShipped")
@dataclass(frozen=True)
class ParcelShipped:
    parcel: str
    weight_grams: int


def test_dataclass_events_round_trip() -> None:
    store = MemoryEventStore()
    store.append("parcel-1", [ParcelShipped("p1", 1200)])
    (event,) = store.read("parcel-1")
    assert event.type == "tests.ParcelShipped"
    assert event.data == ParcelShipped("p1", 1200)


def test_unregistered_dataclass_is_registered_on_append() -> None:
    @dataclass(frozen=True)
    class AdHoc:
        x: int

    store = MemoryEventStore()
    store.append("s", [AdHoc(1)])
    assert [e.data for e in store.read("s")] == [AdHoc(1)]


def test_same_name_for_two_classes_is_refused() -> None:
    registry = TypeRegistry()

    class A(msgspec.Struct):
        x: int

    class B(msgspec.Struct):
        x: int

    registry.register(A, name="clash")
    with pytest.raises(ConfigurationError, match="clash"):
        registry.register(B, name="clash")
    with pytest.raises(ConfigurationError):
        registry.register(int)


def _store_raw(registry: TypeRegistry, cls: type[Any], payload: Any, version: int) -> Any:
    """Write ``payload`` as an event of ``cls`` stored with an old schema version.

    The store then reads with a fresh registry, as a newer release of the
    application would (where the old class no longer exists).
    """
    registry.register(cls, version=version)
    store = MemoryEventStore(serializer=Serializer(registry))
    store.append("s", [payload])
    store.serializer = Serializer(TypeRegistry())
    return store


def test_upcasters_chain_v1_to_v3() -> None:
    registry = TypeRegistry()

    class AddressChangedV1(msgspec.Struct, frozen=True):
        address: str

    store = _store_raw(registry, AddressChangedV1, AddressChangedV1("1 Main St, Springfield"), 1)
    registry = store.serializer.registry

    class AddressChanged(msgspec.Struct, frozen=True):
        street: str
        city: str
        country: str

    # v1 -> v2 splits a field; v2 -> v3 adds a field with a default.
    @registry.upcaster("AddressChangedV1", 1)
    def split(data: dict[str, Any]) -> dict[str, Any]:
        street, city = (part.strip() for part in data["address"].split(","))
        return {"street": street, "city": city}

    @registry.upcaster("AddressChangedV1", 2)
    def add_country(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "country": "US"}

    registry.register(AddressChanged, name="AddressChangedV1", version=3)
    (event,) = store.read("s")
    assert event.data == AddressChanged("1 Main St", "Springfield", "US")
    assert event.schema_version == 1  # stored data is not rewritten


def test_renamed_type_is_read_through_an_alias() -> None:
    registry = TypeRegistry()

    class FundsAdded(msgspec.Struct, frozen=True):
        amount: int

    store = _store_raw(registry, FundsAdded, FundsAdded(5), 1)

    class MoneyDeposited(msgspec.Struct, frozen=True):
        amount: int

    fresh = store.serializer.registry
    fresh.register(MoneyDeposited)
    fresh.alias("FundsAdded", "MoneyDeposited")
    (event,) = store.read("s")
    assert event.data == MoneyDeposited(5)
    assert event.type == "FundsAdded"


def test_missing_upcaster_names_type_version_and_stream() -> None:
    registry = TypeRegistry()

    class Thing(msgspec.Struct, frozen=True):
        x: int

    store = _store_raw(registry, Thing, Thing(1), 1)
    store.serializer.registry.register(Thing, version=2)
    with pytest.raises(SerializationError, match=r"'Thing' from schema version 1.*'s'"):
        list(store.read("s"))


def test_stored_data_not_matching_the_class() -> None:
    registry = TypeRegistry()

    class Old(msgspec.Struct, frozen=True):
        x: str

    store = _store_raw(registry, Old, Old("text"), 1)

    class New(msgspec.Struct, frozen=True):
        x: int

    store.serializer.registry.register(New, name="Old")
    with pytest.raises(SerializationError, match="does not match"):
        list(store.read("s"))


def test_unknown_type_error_message() -> None:
    error = UnknownEventType("Gone", 2, "acc-1")
    assert "Gone" in str(error) and "2" in str(error) and "acc-1" in str(error)


def test_event_subclass_registers_under_custom_name_and_version() -> None:
    class Renamed(Event, frozen=True):
        __event_type__ = "tests.Renamed"
        __event_version__ = 4
        value: int

    store = MemoryEventStore()
    store.append("s", [NewEvent(data=Renamed(value=1), id=uuid7())])
    (event,) = store.read("s")
    assert (event.type, event.schema_version, event.data) == ("tests.Renamed", 4, Renamed(value=1))
