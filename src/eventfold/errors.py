"""The eventfold error hierarchy.

Every error eventfold raises derives from :class:`EventfoldError`; driver
exceptions (``sqlite3``, ``psycopg``) are translated at one boundary per
backend and chained with ``raise ... from exc``. Business-rule violations are
the user's own exceptions and pass through the command handler unchanged.

::

    EventfoldError
    ├── ConcurrencyError
    │   ├── WrongExpectedVersion      # stream, expected, actual
    │   ├── TransactionConflict       # stream: a newer transaction's, unseen
    │   ├── LeaseLost                 # another runner took over a projection
    │   └── LeaseHeld                 # a live runner holds it (a reset waits or refuses)
    ├── StreamNotFound
    │   └── StreamDeleted             # appending to a deleted stream
    ├── InvalidRequest                # also a ValueError: bad argument
    │   ├── IdempotencyKeyReused      # stream, key: one key, two different commands
    │   └── CheckpointRegression      # a checkpoint moved to or behind where it is
    ├── SerializationError            # .stream/.version/.position of a stored event
    │   ├── UnknownEventType
    │   └── InvalidEvent              # also an InvalidRequest: would not read back
    ├── ProjectionStopped             # a handler failed and its policy says stop
    ├── ProjectionBehind              # also a TimeoutError: wait_for timed out
    ├── StoreError                    # wraps driver errors; .retryable
    │   ├── StoreUnavailable
    │   ├── StoreTimeout
    │   └── StoreClosed
    └── ConfigurationError
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Self
from uuid import UUID

if TYPE_CHECKING:  # events import this module: no cycle at run time
    from eventfold.events import RecordedEvent

__all__ = [
    "CheckpointRegression",
    "ConcurrencyError",
    "ConfigurationError",
    "EventfoldError",
    "IdempotencyKeyReused",
    "InvalidEvent",
    "InvalidRequest",
    "LeaseHeld",
    "LeaseLost",
    "ProjectionBehind",
    "ProjectionStopped",
    "SerializationError",
    "StoreClosed",
    "StoreError",
    "StoreTimeout",
    "StoreUnavailable",
    "StreamDeleted",
    "StreamNotFound",
    "TransactionConflict",
    "UnknownEventType",
    "WrongExpectedVersion",
]


class EventfoldError(Exception):
    """Base class of every error raised by eventfold."""


class ConcurrencyError(EventfoldError):
    """A write lost a race against another writer."""


class TransactionConflict(ConcurrencyError):
    """An append in a longer transaction met a newer transaction's events on its stream.

    PostgreSQL, in a REPEATABLE READ or SERIALIZABLE transaction (one
    snapshot throughout): a newer transaction committed events to ``stream``
    that this transaction's snapshot cannot show, so the append cannot
    number its events after them. Nothing was appended; roll the whole
    transaction back and run it again (a new transaction sees them).
    ``retryable`` is True. Under READ COMMITTED an append in a transaction
    always sees the stream's newest events and never raises this.
    """

    retryable = True

    def __init__(self, stream: str) -> None:
        self.stream = stream
        super().__init__(
            f"stream {stream!r} has events of a newer transaction that this transaction's "
            "snapshot cannot show: roll this transaction back and run it again"
        )


class WrongExpectedVersion(ConcurrencyError):
    """The stream was not at the version the writer expected.

    ``expected`` is what the caller asked for (an int version or an
    expectation such as ``NO_STREAM``); ``actual`` is the stream's version at
    the time of the check (0 when the stream does not exist).
    """

    def __init__(self, stream: str, expected: object, actual: int) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"stream {stream!r}: expected version {expected}, but the stream is at {actual}"
        )


class StreamNotFound(EventfoldError):
    """The stream does not exist (or was deleted)."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        super().__init__(f"stream {stream!r} does not exist")


class StreamDeleted(StreamNotFound):
    """The stream was deleted: it cannot be appended to (restore a soft delete first)."""

    def __init__(self, stream: str, hard: bool = False) -> None:
        self.hard = hard
        super().__init__(stream)
        kind = "hard-deleted" if hard else "soft-deleted (restore_stream() recovers it)"
        self.args = (f"stream {stream!r} was {kind}",)


class InvalidRequest(EventfoldError, ValueError):
    """An argument is malformed: bad stream name, negative version, bad limit.

    Raised before anything is written, so the store is left unchanged.
    """


class IdempotencyKeyReused(InvalidRequest):
    """An idempotency key already used on the stream came with a different command.

    Keys are scoped to one stream. The command is not run and nothing is
    written; a retry must send the command it sent first, a new command
    needs a new key. ``stored`` and ``digest`` are the digests of the command
    first handled with ``key`` and of this one.
    """

    def __init__(self, stream: str, key: str, stored: str, digest: str) -> None:
        self.stream = stream
        self.key = key
        self.stored = stored
        self.digest = digest
        super().__init__(
            f"idempotency key {key!r} was already used on stream {stream!r} for a different "
            f"command (digest {stored}, this command's {digest}): a new command needs a new key"
        )


class SerializationError(EventfoldError):
    """An event or metadata could not be encoded, or stored data not decoded.

    Raised for a stored event, it says where that event is: ``stream``,
    ``version``, ``position`` and ``event_id`` (a UUID) are set then, and
    None for errors that concern no stored event. A reader that must go on
    past an event it cannot decode resumes with ``read_all(after=position)``.
    """

    stream: str | None = None
    version: int | None = None
    position: int | None = None
    event_id: UUID | None = None

    def locate(
        self, stream: str, version: int, position: int, event_id: UUID | None = None
    ) -> Self:
        """Record where the stored event is (and name it in the message); return self."""
        self.stream, self.version, self.position, self.event_id = (
            stream,
            version,
            position,
            event_id,
        )
        where = f"stored event at position {position} (stream {stream!r}, version {version})"
        self.args = (f"{where}: {self.args[0]}" if self.args else where, *self.args[1:])
        return self


class UnknownEventType(SerializationError):
    """A stored event names a type that no registered class matches."""

    type_name: str
    schema_version: int

    def __init__(self, type_name: str, schema_version: int = 1, stream: str | None = None) -> None:
        self.type_name = type_name
        self.schema_version = schema_version
        self.stream = stream
        where = f" in stream {stream!r}" if stream is not None else ""
        super().__init__(
            f"unknown event type {type_name!r} (schema version {schema_version}){where}: "
            "import or register the class that defines it"
        )


class InvalidEvent(SerializationError, InvalidRequest):
    """An event (or its metadata) that would not read back as written.

    The write path encodes every event and decodes it again as readers will,
    and refuses the batch, with nothing written, when that is not possible
    (a value not of its field's declared type, a NaN or infinite float, a
    non-str metadata key, a value that would come back as another type).
    ``event_type`` names the type, ``field`` the place (``quantity``,
    ``lines[2].price``, ``metadata['tags']``, or ``""`` for the event as a
    whole) and ``problem`` what is wrong.
    """

    def __init__(self, event_type: str, field: str, problem: str) -> None:
        self.event_type = event_type
        self.field = field
        self.problem = problem
        where = f" at {field}" if field else ""
        super().__init__(f"{event_type} event{where}: {problem}; nothing was appended")


class StoreError(EventfoldError):
    """The storage backend failed. ``retryable`` says whether retrying may help.

    ``outcome_unknown`` is True when the connection failed after an append
    was sent, before its answer arrived: the append may or may not have been
    committed. Appending the same ``NewEvent`` objects again (same ids) is
    then safe: the store is idempotent by event id, so the retry returns the
    original result if the first attempt was stored, and stores the events
    once otherwise. Plain event objects get fresh ids on every call and would
    be stored twice. False when the store knows nothing was written (no
    connection could be had, or the server refused the statement).
    """

    retryable: bool = False
    outcome_unknown: bool = False


class StoreUnavailable(StoreError):
    """The backend cannot be reached (connection refused, server restarting)."""

    retryable = True


class StoreTimeout(StoreError):
    """The backend did not answer in time (lock wait, statement timeout)."""

    retryable = True


class StoreClosed(StoreError):
    """The store was closed; create a new one."""


class ConfigurationError(EventfoldError):
    """eventfold was set up wrongly (bad option, missing extra, missing schema)."""


class LeaseLost(ConcurrencyError):
    """Another runner took over this projection; this one must stop writing."""


class LeaseHeld(ConcurrencyError):
    """Another live runner holds the projection's lease (a reset must not pull the
    read model from under it). ``owner`` and ``expires`` name the holder and when
    its lease runs out unless it renews it."""

    def __init__(self, name: str, owner: str, expires: datetime) -> None:
        self.name = name
        self.owner = owner
        self.expires = expires
        super().__init__(
            f"projection {name!r} is being run by {owner} (lease until "
            f"{expires.isoformat(timespec='seconds')}): stop that runner first, or wait for "
            "it (reset(wait=...), the CLI's --wait), or rebuild without downtime beside it "
            "as a projection with a new name and switch readers to it (switch_projection, "
            "`eventfold projections switch`)"
        )


class ProjectionStopped(EventfoldError):
    """A projection's handler failed on an event and its policy says stop."""

    def __init__(self, name: str, event: RecordedEvent, error: BaseException) -> None:
        self.name = name
        self.event = event
        self.error = error
        super().__init__(
            f"projection {name!r} stopped at position {event.position} "
            f"({event.type} in {event.stream!r} v{event.version}): {error!r}"
        )


class ProjectionBehind(EventfoldError, TimeoutError):
    """A wait for a projection to pass a position ran out of time.

    ``name`` is the projection (or alias) waited for, ``position`` the
    position it had to pass and ``reached`` its checkpoint when the wait
    ended. ``retryable`` is True: the projection may just be slow, stopped,
    or held back (its status says which).
    """

    retryable = True

    def __init__(self, name: str, position: int, reached: int, timeout: float) -> None:
        self.name = name
        self.position = position
        self.reached = reached
        super().__init__(
            f"projection {name!r} had not passed position {position} after {timeout:g} s "
            f"(its checkpoint: {reached}); see its status for why"
        )


class CheckpointRegression(InvalidRequest):
    """A checkpoint was to be advanced to its current position or behind it.

    Checkpoints only move forward (a reset aside): a consumer that would move
    one back has read the log twice, and an exactly-once effect depends on it.
    """

    def __init__(self, name: str, current: int, position: int) -> None:
        self.name = name
        self.current = current
        self.position = position
        super().__init__(
            f"checkpoint {name!r} is at position {current}: it cannot be advanced to "
            f"{position} (checkpoints only move forward; reset it to start over)"
        )
