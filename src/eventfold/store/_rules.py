"""I/O-free rules every backend shares: validation, expectations, idempotency, lifecycle.

Backends only move rows. Everything that decides (is this expected version
satisfied? is this stream name valid? is this batch a retry of one already
stored?) lives here once, so the memory, SQLite and PostgreSQL stores cannot
disagree about semantics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from eventfold._checks import MAX_STREAM_NAME
from eventfold._clock import now_us, us_to_datetime
from eventfold.errors import (
    InvalidRequest,
    StreamDeleted,
    StreamNotFound,
    WrongExpectedVersion,
)
from eventfold.events import uuid_from_bytes
from eventfold.serialization import Serializer
from eventfold.store._rows import (
    EncodedEvent,
)
from eventfold.store._types import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    Deletion,
    Expected,
    StreamInfo,
    StreamState,
)


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
    return AppendResult(stream, first, places[-1][1], places[-1][2], tuple(p[2] for p in places))


def nothing_appended(stream: str, version: int) -> AppendResult:
    """The result of an empty batch: the stream stays at ``version``, nothing written."""
    return AppendResult(stream, version + 1, version, 0, ())


def retried_many(
    appends: Sequence[tuple[str, Sequence[EncodedEvent], Expected]],
    retried: Sequence[AppendResult | None],
) -> bool:
    """Decide whether a multi-stream append is a retry of one already stored.

    ``retried`` holds, for each of ``appends``, the :func:`idempotent_result`
    of its batch (None: not stored, or an empty batch). True when every
    non-empty batch is stored (the call is a retry: answer with the original
    results), False when none is; InvalidRequest when only some are: ids
    reused across calls, which no retry of one call can produce.
    """
    stored = [a[0] for a, r in zip(appends, retried, strict=True) if r is not None]
    if not stored:
        return False
    missing = [a[0] for a, r in zip(appends, retried, strict=True) if r is None and a[1]]
    if missing:
        raise InvalidRequest(
            f"append_many reuses event ids: the batches for {stored} are already stored, "
            f"those for {missing} are not; a retry must repeat the whole call with the "
            "same NewEvent objects"
        )
    return True


def check_many_ids(appends: Sequence[tuple[str, Sequence[EncodedEvent], Expected]]) -> None:
    """Refuse an event id given in the batches of two streams of one multi-stream append."""
    owner: dict[bytes, str] = {}
    for stream, batch, _ in appends:
        for event in batch:
            other = owner.setdefault(event.id, stream)
            if other != stream:
                raise InvalidRequest(
                    f"appends: event id {uuid_from_bytes(event.id)} is given for both "
                    f"{other!r} and {stream!r}: an event id may be appended only once"
                )


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


def is_hard_deletion(data: bytes | None) -> bool:
    """Whether a stored deletion record (None: not deleted) erased the events."""
    deletion = decode_deletion(data)
    return deletion is not None and deletion[0].hard


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
