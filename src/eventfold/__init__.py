"""eventfold: event sourcing for Python.

Events are facts stored in append-only streams; state is rebuilt by folding
them. This package gives you event types, class-style aggregates and
functional deciders, a command handler with optimistic concurrency, and
event stores (memory, SQLite, PostgreSQL) in sync and async flavours.
"""

from eventfold.aggregate import Aggregate
from eventfold.commands import (
    AsyncCommandHandler,
    CommandHandler,
    CommandResult,
    Loaded,
)
from eventfold.decider import Decider
from eventfold.errors import (
    ConcurrencyError,
    ConfigurationError,
    EventfoldError,
    IdempotencyKeyReused,
    InvalidEvent,
    InvalidRequest,
    SerializationError,
    StoreClosed,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    StreamDeleted,
    StreamNotFound,
    UnknownEventType,
    WrongExpectedVersion,
)
from eventfold.events import (
    CAUSATION_ID,
    CORRELATION_ID,
    Event,
    NewEvent,
    RecordedEvent,
    caused_by,
    uuid7,
)
from eventfold.serialization import Serializer, TypeRegistry, default_registry, event_type
from eventfold.store import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    AsyncEventStore,
    Deletion,
    EventStore,
    Expected,
    Snapshot,
    StreamInfo,
)
from eventfold.store.memory import AsyncMemoryEventStore, MemoryEventStore
from eventfold.store.sqlite import AsyncSqliteEventStore, SqliteEventStore

__version__ = "0.1.0"

__all__ = [
    "ANY",
    "Aggregate",
    "AppendResult",
    "AsyncCommandHandler",
    "AsyncEventStore",
    "AsyncMemoryEventStore",
    "AsyncSqliteEventStore",
    "CAUSATION_ID",
    "CORRELATION_ID",
    "CommandHandler",
    "CommandResult",
    "ConcurrencyError",
    "ConfigurationError",
    "Decider",
    "Deletion",
    "Event",
    "EventStore",
    "EventfoldError",
    "Expected",
    "IdempotencyKeyReused",
    "InvalidEvent",
    "InvalidRequest",
    "Loaded",
    "MemoryEventStore",
    "NO_STREAM",
    "NewEvent",
    "RecordedEvent",
    "STREAM_EXISTS",
    "SerializationError",
    "Serializer",
    "Snapshot",
    "SqliteEventStore",
    "StoreClosed",
    "StoreError",
    "StoreTimeout",
    "StoreUnavailable",
    "StreamDeleted",
    "StreamInfo",
    "StreamNotFound",
    "TypeRegistry",
    "UnknownEventType",
    "WrongExpectedVersion",
    "caused_by",
    "default_registry",
    "event_type",
    "uuid7",
]
