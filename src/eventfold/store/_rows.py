"""Rows as backends store them, and their codec: encoding a batch, decoding pages.

The hot paths of every append and every read live here once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeAlias
from uuid import UUID

import msgspec

from eventfold._clock import us_to_datetime
from eventfold.errors import (
    InvalidRequest,
    SerializationError,
)
from eventfold.events import NewEvent, RecordedEvent, uuid7_bytes, uuid_from_bytes
from eventfold.serialization import EMPTY_METADATA, Serializer
from eventfold.store._types import DeadLetter, Snapshot


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
#: A plain tuple (rows are made and read millions of times); read its fields
#: by the index names below, never by number.
Row: TypeAlias = tuple[int, str, int, bytes, str, int, bytes, bytes | None, int]
POSITION: Final = 0
STREAM: Final = 1
VERSION: Final = 2
ID: Final = 3
TYPE: Final = 4
SCHEMA_VERSION: Final = 5
DATA: Final = 6
METADATA: Final = 7
RECORDED_AT: Final = 8

#: A stored snapshot as backends select it (load_snapshot.sql, list_snapshots.sql):
#: (version, state_type, schema_version, data, recorded_at_us).
SnapshotRow: TypeAlias = tuple[int, str, int, bytes, int]


def row_matches(row: Row, types: frozenset[str] | None, prefix: str | None) -> bool:
    """Whether ``row`` passes a type filter (stored names) and a stream prefix (None: any)."""
    return (types is None or row[TYPE] in types) and (
        prefix is None or row[STREAM].startswith(prefix)
    )


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


def decode_rows(serializer: Serializer, rows: Sequence[Row]) -> list[RecordedEvent]:
    """Turn stored rows into RecordedEvents (decoding payloads and metadata).

    The hot path of every read: one comprehension with the serializer's fast
    path (a typed decoder per type and schema version) inlined, since
    per-row function calls dominate the cost. Anything unusual (unknown
    types, upcasting, undecodable data) goes through ``serializer.decode``;
    an event that cannot be decoded raises SerializationError naming its
    stream, version and position.
    """
    fast = serializer.registry.decoders
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

    def decode_again(self, serializer: Serializer) -> RecordedEvent | None:
        """The event decoded again from its stored row (the registry may have been
        fixed meanwhile); raises SerializationError if it still cannot be. None when
        there is no row to decode (read the event again through the store)."""
        return None if self.row is None else decode_row(serializer, self.row)


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
                    row[ID],
                    row[STREAM],
                    row[VERSION],
                    row[POSITION],
                    row[TYPE],
                    Undecodable(exc, row),
                    EMPTY_METADATA,
                    row[RECORDED_AT],
                    row[SCHEMA_VERSION],
                )
            )
    return events


def dead_letters_from_rows(rows: Sequence[Sequence[Any]]) -> list[DeadLetter]:
    """DeadLetters from stored rows (position, event id, stream, version, type, error,
    recorded µs, schema version, data, metadata), whatever types the driver gave."""
    return [
        DeadLetter(
            int(position),
            bytes(event_id),
            stream,
            version,
            type_,
            error,
            us_to_datetime(at),
            schema_version,
            None if data is None else bytes(data),
            None if metadata is None else bytes(metadata),
        )
        for (
            position,
            event_id,
            stream,
            version,
            type_,
            error,
            at,
            schema_version,
            data,
            metadata,
        ) in rows
    ]


def snapshot_from_row(stream: str, row: Sequence[Any]) -> Snapshot:
    """The Snapshot of a selected snapshot row, whatever bytes type the driver gave."""
    version, state_type, schema_version, data, recorded_at = row
    return Snapshot(
        stream, version, state_type, schema_version, bytes(data), us_to_datetime(recorded_at)
    )
