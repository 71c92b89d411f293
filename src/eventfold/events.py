"""Events: the user's event classes, events about to be written, recorded events.

An event type is a frozen, typed class. Subclass :class:`Event` (a frozen
``msgspec.Struct``) and it is registered under its class name; set
``__event_type__`` to choose a stable name that survives renames and
``__event_version__`` when the schema changes (see upcasters in
:mod:`eventfold.serialization`). Frozen dataclasses work too: they are
registered on first append, or explicitly with :func:`eventfold.event_type`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID, SafeUUID

import msgspec

from eventfold._clock import now_ns, random_bytes
from eventfold.serialization import NOT_EVENT_TYPES, default_registry

__all__ = [
    "CAUSATION_ID",
    "CORRELATION_ID",
    "Event",
    "NewEvent",
    "RecordedEvent",
    "caused_by",
    "uuid7",
    "uuid7_bytes",
    "uuid_from_bytes",
]

#: Metadata key of the id of the first event or command of a conversation.
CORRELATION_ID = "correlation_id"
#: Metadata key of the id of the event or command that directly caused this one.
CAUSATION_ID = "causation_id"

_uuid7_lock = threading.Lock()
_uuid7_last = 0
_VERSION_VARIANT = (0x7 << 76) | (0b10 << 62)
_RAND_B_MASK = (1 << 62) - 1
# One getrandom syscall per 512 ids instead of one per id.
_RANDOM_CHUNK = 8 * 512
_random_pool = b""
_random_at = _RANDOM_CHUNK
_new_uuid = object.__new__
_set_attr = object.__setattr__
_UNKNOWN_SAFETY = SafeUUID.unknown


def restart_ids() -> None:
    """Forget the last id made and the random bytes drawn (a test clock starts over)."""
    global _uuid7_last, _random_at
    with _uuid7_lock:
        _uuid7_last, _random_at = 0, _RANDOM_CHUNK


def uuid_from_int(value: int) -> UUID:
    """Build a UUID from a 128-bit int without ``UUID.__init__``'s argument checks."""
    result: UUID = _new_uuid(UUID)
    _set_attr(result, "int", value)
    _set_attr(result, "is_safe", _UNKNOWN_SAFETY)
    return result


def uuid_from_bytes(data: bytes) -> UUID:
    """Build a UUID from 16 stored bytes (fast path for reads)."""
    return uuid_from_int(int.from_bytes(data))


def _uuid7_int() -> int:
    global _uuid7_last, _random_pool, _random_at  # noqa: PLW0603 - process-wide clock
    ns = now_ns()
    ms, sub_ms = divmod(ns, 1_000_000)
    # 12 bits of sub-millisecond precision (RFC 9562 method 3) then 62 random bits.
    time_bits = (ms << 80) | (((sub_ms * 4096) // 1_000_000) << 64) | _VERSION_VARIANT
    with _uuid7_lock:
        if _random_at == _RANDOM_CHUNK:
            _random_pool, _random_at = random_bytes(_RANDOM_CHUNK), 0
        rand_b = int.from_bytes(_random_pool[_random_at : _random_at + 8]) & _RAND_B_MASK
        _random_at += 8
        value = time_bits | rand_b
        if value <= _uuid7_last:
            # Same tick or clock stepped back: keep order by counting up in rand_b.
            value = _uuid7_last + 1
        _uuid7_last = value
    return value


def uuid7() -> UUID:
    """Return a new UUIDv7 (RFC 9562): time ordered, and strictly increasing
    within this process even when many ids are made in one millisecond."""
    return uuid_from_int(_uuid7_int())


def uuid7_bytes() -> bytes:
    """A new UUIDv7 as 16 bytes (what stores keep), skipping the UUID object."""
    return _uuid7_int().to_bytes(16)


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Base class for event types: a frozen, typed, fast-to-encode struct.

    >>> class MoneyDeposited(Event):
    ...     amount: int

    The stored type name defaults to the class name; override it with
    ``__event_type__ = "bank.MoneyDeposited"``. ``__event_version__`` is the
    schema version written with new events (default 1).
    """

    __event_type__: ClassVar[str]
    __event_version__: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        default_registry.register(cls)


class NewEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event about to be appended, with its id and metadata.

    Appending a plain event object wraps it in a ``NewEvent`` with a fresh
    UUIDv7 and empty metadata. Give the id yourself to make a retried append
    idempotent: a stream never stores the same event id twice.
    """

    data: object
    id: UUID = msgspec.field(default_factory=uuid7)
    metadata: Mapping[str, Any] = msgspec.field(default_factory=dict)


class RecordedEvent(msgspec.Struct, frozen=True, gc=False):
    """An event as stored: payload plus where and when it was recorded.

    ``version`` is the 1-based place in its stream; ``position`` the place in
    the store's global log (strictly increasing in the order readers of
    ``read_all`` see events, not necessarily dense). ``id`` (a UUID) and
    ``recorded_at`` (an aware UTC datetime) are built from the stored
    ``raw_id`` bytes and ``recorded_at_us`` microseconds when first asked for:
    readers that fold thousands of events rarely need either.
    """

    raw_id: bytes
    stream: str
    version: int
    position: int
    type: str
    data: Any
    metadata: Mapping[str, Any]
    recorded_at_us: int
    schema_version: int = 1

    @property
    def id(self) -> UUID:
        """The event's id."""
        return uuid_from_bytes(self.raw_id)

    @property
    def recorded_at(self) -> datetime:
        """When the store recorded the event (UTC)."""
        return datetime.fromtimestamp(self.recorded_at_us / 1_000_000, UTC)


NOT_EVENT_TYPES[NewEvent] = "a NewEvent cannot be the data of an event: append it itself"
NOT_EVENT_TYPES[RecordedEvent] = (
    "a RecordedEvent cannot be appended: to copy it, append "
    "NewEvent(data=event.data, id=event.id, metadata=event.metadata)"
)


def caused_by(event: RecordedEvent, **extra: Any) -> dict[str, Any]:
    """Metadata for an event caused by ``event``: same correlation id, causation = its id."""
    correlation = event.metadata.get(CORRELATION_ID, str(event.id))
    return {CORRELATION_ID: correlation, CAUSATION_ID: str(event.id), **extra}
