"""I/O-free pieces every backend shares: expectations, validation, row codec.

Backends only move rows. Everything that decides (is this expected version
satisfied? is this stream name valid? is this batch a retry of one already
stored?) lives here once, so the memory, SQLite and PostgreSQL stores cannot
disagree about semantics.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias
from uuid import UUID

import msgspec

from eventfold.errors import (
    InvalidRequest,
    SerializationError,
    StreamDeleted,
    StreamNotFound,
    WrongExpectedVersion,
)
from eventfold.events import NewEvent, RecordedEvent, uuid7_bytes, uuid_from_bytes
from eventfold.serialization import EMPTY_METADATA, Serializer

__all__ = [
    "ANY",
    "Deletion",
    "Snapshot",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendResult",
    "EncodedEvent",
    "Expected",
    "Row",
    "StreamInfo",
    "StreamState",
]

MAX_STREAM_NAME = 512
#: The largest version, limit or count any backend stores (SQLite's and
#: PostgreSQL's 64-bit signed integers).
MAX_VERSION: Final = 2**63 - 1
#: The largest position any backend issues (PostgreSQL's are 128-bit pairs).
MAX_POSITION: Final = 2**128 - 1


class StreamState(enum.Enum):
    """Expectations about a stream that are not a version number."""

    ANY = "any"
    NO_STREAM = "no_stream"
    STREAM_EXISTS = "stream_exists"

    def __repr__(self) -> str:
        return self.name

    __str__ = __repr__


#: Append whatever the stream's version is.
ANY: Final = StreamState.ANY
#: Append only if the stream has no events (creating it).
NO_STREAM: Final = StreamState.NO_STREAM
#: Append only if the stream already has events.
STREAM_EXISTS: Final = StreamState.STREAM_EXISTS

#: What ``append(..., expected=...)`` accepts: an expectation or an exact version.
Expected: TypeAlias = StreamState | int


class AppendResult(msgspec.Struct, frozen=True):
    """Where an append landed: the stream's versions and the last global position.

    ``from_version``..``to_version`` are the versions of the appended events;
    ``to_version`` is the stream's version afterwards. For an empty batch
    ``from_version == to_version + 1`` and ``position`` is 0.
    """

    stream: str
    from_version: int
    to_version: int
    position: int


class Deletion(msgspec.Struct, frozen=True):
    """Who deleted (or truncated) a stream, when and why; ``hard`` if events were erased."""

    at: datetime
    by: str
    reason: str
    hard: bool


class StreamInfo(msgspec.Struct, frozen=True):
    """A stream's current version, user metadata and lifecycle.

    ``first_version`` is the oldest version still stored (greater than 1
    after a truncation, described by ``truncated``); ``deleted`` is set for
    a soft- or hard-deleted stream, whose events are hidden from reads.
    """

    stream: str
    version: int
    metadata: Mapping[str, Any]
    first_version: int = 1
    deleted: Deletion | None = None
    truncated: Deletion | None = None


class Snapshot(msgspec.Struct, frozen=True):
    """A stored snapshot of a stream's state right after ``version``.

    ``state_type`` and ``schema_version`` say how ``data`` was encoded, so a
    reader whose state class changed can ignore it and rebuild from events.
    """

    stream: str
    version: int
    state_type: str
    schema_version: int
    data: bytes
    recorded_at: datetime


class EncodedEvent(msgspec.Struct, frozen=True, array_like=True):
    """An event ready for the store: id as 16 bytes, JSON payload and metadata."""

    id: bytes
    type: str
    schema_version: int
    data: bytes
    metadata: bytes | None


#: Called inside an append's transaction with the driver connection (None for
#: the memory store) and the rows just written; raising undoes the append.
InlineHook: TypeAlias = "Callable[[Any, list[Row]], None]"

#: A stored row as backends return it:
#: (position, stream, version, id bytes, type, schema_version, data, metadata, recorded_at_us)
Row: TypeAlias = tuple[int, str, int, bytes, str, int, bytes, bytes | None, int]


def check_stream_name(stream: object) -> str:
    """Return ``stream`` if it is a valid stream name, else raise InvalidRequest."""
    if not isinstance(stream, str):
        raise InvalidRequest(f"stream name must be a str, not {type(stream).__name__}")
    if not stream or len(stream) > MAX_STREAM_NAME:
        raise InvalidRequest(f"stream name must have 1 to {MAX_STREAM_NAME} characters")
    if not stream.isprintable() or stream != stream.strip():
        raise InvalidRequest(
            f"stream name {stream!r} has control characters or surrounding whitespace"
        )
    return stream


def check_expected(expected: object) -> Expected:
    """Validate an ``expected`` argument (not its truth)."""
    if isinstance(expected, StreamState):
        return expected
    if isinstance(expected, bool) or not isinstance(expected, int):
        raise InvalidRequest(
            f"expected must be ANY, NO_STREAM, STREAM_EXISTS or an int version, not {expected!r}"
        )
    if expected < 0:
        # No upper bound: a version no stream can reach is a wrong expectation.
        raise InvalidRequest(f"expected version must be >= 0, not {expected}")
    return expected


def check_non_negative(
    name: str,
    value: object,
    *,
    minimum: int = 0,
    maximum: int | None = MAX_VERSION,
    error: type[Exception] = InvalidRequest,
) -> int:
    """Validate an int argument such as a version or count (at most 2**63-1).

    ``maximum=None`` leaves it unbounded (a limit: more than exists means all).
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        if maximum is None:
            bound = f"an int >= {minimum}"
        else:
            top = "2**63-1" if maximum == MAX_VERSION else str(maximum)
            bound = f"an int from {minimum} to {top}"
        raise error(f"{name} must be {bound}, not {_short(value)}")
    return value


def check_position(name: str, value: object) -> int:
    """Validate a global-log position argument: an int >= 0.

    Positions are opaque cursors, so any size is valid: one beyond every
    position a backend can issue is after every event (reads find nothing).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(f"{name} must be a position (an int >= 0), not {_short(value)}")
    return value


def check_bool(name: str, value: object, *, error: type[Exception] = InvalidRequest) -> bool:
    """Validate a flag: only True or False (a flag that destroys data takes no "no").

    ``error`` is the class raised: InvalidRequest for call arguments,
    ConfigurationError for a store's or a runner's options.
    """
    if not isinstance(value, bool):
        raise error(f"{name} must be True or False, not {_short(value)}")
    return value


def check_seconds(
    name: str,
    value: object,
    *,
    allow_zero: bool = False,
    error: type[Exception] = InvalidRequest,
) -> float:
    """Validate a duration: a finite int or float > 0 (>= 0 with ``allow_zero``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        sign = ">= 0" if allow_zero else "> 0"
        raise error(f"{name} must be finite seconds {sign}, not {_short(value)}")
    return float(value)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def expectation_met(expected: Expected, actual: int) -> bool:
    """Whether a stream at version ``actual`` (0 = no stream) satisfies ``expected``."""
    if expected is ANY:
        return True
    if expected is NO_STREAM:
        return actual == 0
    if expected is STREAM_EXISTS:
        return actual > 0
    return actual == expected


def ensure_expected(stream: str, expected: Expected, actual: int) -> None:
    """Raise WrongExpectedVersion unless ``actual`` satisfies ``expected``."""
    if not expectation_met(expected, actual):
        raise WrongExpectedVersion(stream, expected, actual)


def encode_batch(serializer: Serializer, events: Sequence[object]) -> list[EncodedEvent]:
    """Encode a batch; raises before any I/O so a bad event writes nothing."""
    if isinstance(events, (str, bytes)) or not isinstance(events, Sequence):
        raise InvalidRequest("events must be a sequence (list or tuple) of events")
    encoded: list[EncodedEvent] = []
    seen: set[bytes] = set()
    encode = serializer.encode
    for item in events:
        if type(item) is NewEvent:
            event_id = item.id
            if not isinstance(event_id, UUID):
                raise InvalidRequest(f"event id must be a UUID, not {event_id!r}")
            id_bytes = event_id.bytes
            if id_bytes in seen:
                raise InvalidRequest(f"event id {event_id} appears twice in one batch")
            seen.add(id_bytes)
            type_name, schema_version, payload = encode(item.data)
            metadata = item.metadata
            meta = (
                serializer.encode_metadata(metadata, type_name)
                if metadata or not isinstance(metadata, Mapping)
                else None
            )
        else:
            # Fresh ids are unique by construction: no duplicate check needed.
            id_bytes = uuid7_bytes()
            type_name, schema_version, payload = encode(item)
            meta = None
        encoded.append(EncodedEvent(id_bytes, type_name, schema_version, payload, meta))
    return encoded


def idempotent_result(
    stream: str,
    batch: Sequence[EncodedEvent],
    found: Mapping[bytes, tuple[str, int, int]],
) -> AppendResult | None:
    """Decide whether ``batch`` is a retry of an append already stored.

    ``found`` maps the batch's ids that are already stored to their
    (stream, version, position). Returns the original result when the whole
    batch is stored, contiguously, in ``stream``; None when none of it is;
    raises InvalidRequest for anything in between (reused ids).
    """
    if not found:
        return None
    places = [found[e.id] for e in batch if e.id in found]
    if len(places) != len(batch) or any(p[0] != stream for p in places):
        other = places[0]
        raise InvalidRequest(
            f"append to {stream!r} reuses event ids already stored in {other[0]!r} at "
            f"version {other[1]}: an event id may be appended only once"
        )
    first = places[0][1]
    if [p[1] for p in places] != list(range(first, first + len(places))):
        raise InvalidRequest(f"append to {stream!r} repeats stored event ids in another order")
    return AppendResult(stream, first, places[-1][1], places[-1][2])


def now_us() -> int:
    """Current UTC time in integer microseconds since the epoch."""
    return time.time_ns() // 1000


def datetime_to_us(value: datetime) -> int:
    """Convert an aware datetime to integer microseconds since the epoch (exact)."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def us_to_datetime(us: int) -> datetime:
    """Convert stored microseconds to an aware UTC datetime."""
    return datetime.fromtimestamp(us / 1_000_000, UTC)


def decode_rows(serializer: Serializer, rows: Sequence[Row]) -> list[RecordedEvent]:
    """Turn stored rows into RecordedEvents (decoding payloads and metadata).

    The hot path of every read: one comprehension with the serializer's fast
    path (a typed decoder per type and schema version) inlined, since
    per-row function calls dominate the cost. Anything unusual (unknown
    types, upcasting, undecodable data) goes through ``serializer.decode``;
    an event that cannot be decoded raises SerializationError naming its
    stream, version and position.
    """
    fast = serializer.registry._fast
    slow = serializer.decode
    metadata = serializer.decode_metadata
    try:
        return [
            RecordedEvent(
                id_bytes,
                stream,
                version,
                position,
                type_name,
                decoder(data)
                if (decoder := fast.get((type_name, schema_version))) is not None
                else slow(type_name, schema_version, data, stream, version, position),
                EMPTY_METADATA if meta is None else metadata(meta),
                recorded,
                schema_version,
            )
            for (
                position,
                stream,
                version,
                id_bytes,
                type_name,
                schema_version,
                data,
                meta,
                recorded,
            ) in rows
        ]
    except (msgspec.DecodeError, SerializationError, RecursionError):
        # Something met data it cannot decode: the full path says which and why.
        return [decode_row(serializer, row) for row in rows]


def decode_row(serializer: Serializer, row: Row) -> RecordedEvent:
    """Turn one stored row into a RecordedEvent through the serializer's full path.

    Raises SerializationError (with ``stream``, ``version``, ``position`` and
    ``event_id`` set) if its payload or metadata cannot be decoded.
    """
    position, stream, version, id_bytes, type_name, schema_version, data, meta, recorded = row
    try:
        payload = serializer.decode(type_name, schema_version, data, stream, version, position)
        metadata = serializer.decode_metadata(meta)
    except SerializationError as exc:
        if exc.position is None:
            exc.locate(stream, version, position)
        exc.event_id = uuid_from_bytes(id_bytes)
        raise
    return RecordedEvent(
        id_bytes, stream, version, position, type_name, payload, metadata, recorded, schema_version
    )


def decode_rows_partial(
    serializer: Serializer, rows: Sequence[Row]
) -> tuple[list[RecordedEvent], SerializationError | None]:
    """The events of ``rows`` up to the first that cannot be decoded, and its error.

    Readers yield what they could decode before raising, so a reader that
    stops at an undecodable event has seen every event before it.
    """
    try:
        return decode_rows(serializer, rows), None
    except SerializationError:
        pass
    events: list[RecordedEvent] = []
    for row in rows:
        try:
            events.append(decode_row(serializer, row))
        except SerializationError as exc:
            return events, exc
    return events, None  # pragma: no cover - the full decode failed on some row


class Undecodable:
    """The payload of a stored event that could not be decoded when it was read.

    Readers that must not stop at such an event (projection runners, which
    hand it to their error policy) get it as ``RecordedEvent.data``, with
    the error and the stored ``row`` (None when the store gave no row).
    """

    __slots__ = ("error", "row")

    def __init__(self, error: SerializationError, row: Row | None) -> None:
        self.error = error
        self.row = row

    def __repr__(self) -> str:
        return f"Undecodable({self.error})"


def decode_rows_lenient(serializer: Serializer, rows: Sequence[Row]) -> list[RecordedEvent]:
    """Like :func:`decode_rows`, but an undecodable event becomes one whose data is
    :class:`Undecodable` instead of raising (a projection's error policy decides)."""
    try:
        return decode_rows(serializer, rows)
    except SerializationError:
        pass
    events: list[RecordedEvent] = []
    for row in rows:
        try:
            events.append(decode_row(serializer, row))
        except SerializationError as exc:
            events.append(
                RecordedEvent(
                    row[3],
                    row[1],
                    row[2],
                    row[0],
                    row[4],
                    Undecodable(exc, row),
                    EMPTY_METADATA,
                    row[8],
                    row[5],
                )
            )
    return events


class _DeletionRecord(msgspec.Struct, frozen=True):
    at: int
    by: str
    reason: str
    hard: bool
    version: int


def encode_deletion(by: str, reason: str, hard: bool, version: int) -> bytes:
    """The JSON a backend stores for a deletion (who, why, when, and the version then)."""
    return msgspec.json.encode(_DeletionRecord(now_us(), by, reason, hard, version))


def decode_deletion(data: bytes | None) -> tuple[Deletion, int] | None:
    """The Deletion and the version at deletion time, from stored JSON."""
    if data is None:
        return None
    record = msgspec.json.decode(data, type=_DeletionRecord)
    return Deletion(
        us_to_datetime(record.at), record.by, record.reason, record.hard
    ), record.version


def check_who_why(by: object, reason: object) -> None:
    """Validate the audit fields of deletions and truncations."""
    if not isinstance(by, str) or not isinstance(reason, str):
        raise InvalidRequest("by and reason must be str")


def stream_info_from(
    serializer: Serializer,
    stream: str,
    version: int,
    first_version: int | None,
    metadata: bytes | None,
    deletion: bytes | None,
    truncation: bytes | None,
) -> StreamInfo | None:
    """Build a StreamInfo from a backend's stored columns (None: no such stream)."""
    deleted = decode_deletion(deletion)
    if version == 0 and deleted is None:
        return None
    if deleted is not None and version == 0:
        version = deleted[1]  # a hard delete erased the events, not the version
    truncated = decode_deletion(truncation)
    return StreamInfo(
        stream,
        version,
        serializer.decode_metadata(metadata),
        first_version if first_version is not None else version + 1,
        deleted[0] if deleted else None,
        truncated[0] if truncated else None,
    )


# -- stream lifecycle decisions, shared by every backend --------------------------------


def deletion_version(stream: str, version: int, deletion: bytes | None, hard: bool) -> int | None:
    """The version to record for deleting ``stream``, or None if nothing is left to do.

    ``version`` is the stream's current version (0: no events), ``deletion``
    its stored deletion record. Deleting twice is harmless; a soft-deleted
    stream may still be hard-deleted.
    """
    current = decode_deletion(deletion)
    if version == 0 and current is None:
        raise StreamNotFound(stream)
    if current is not None and (current[0].hard or not hard):
        return None  # already deleted at least as thoroughly
    return current[1] if current is not None else version


def restore_needed(stream: str, version: int, deletion: bytes | None) -> bool:
    """Whether restoring ``stream`` has a soft delete to undo (errors if it cannot)."""
    current = decode_deletion(deletion)
    if current is None:
        if version == 0:
            raise StreamNotFound(stream)
        return False
    if current[0].hard:
        raise StreamDeleted(stream, hard=True)
    return True


def truncation_point(stream: str, version: int, deletion: bytes | None, before: int) -> int:
    """The first version a truncation keeps: the newest event always stays."""
    current = decode_deletion(deletion)
    if current is not None:
        raise StreamDeleted(stream, current[0].hard)
    if version == 0:
        raise StreamNotFound(stream)
    return min(before, version)
