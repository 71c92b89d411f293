"""eventfold: event sourcing for Python.

Events are facts stored in append-only streams; state is rebuilt by folding
them. This package gives you event types, class-style aggregates and
functional deciders, a command handler with optimistic concurrency, and
event stores (memory, SQLite, PostgreSQL) in sync and async flavours.

The rule of the surface: this top level holds events, models, the command
handler, the stores and every error; each feature module owns its own names
(``eventfold.projections``, ``eventfold.processes``, ``eventfold.evolution``,
``eventfold.snapshots``, ``eventfold.store`` for the seams, ``eventfold.testing``).
Every public name has one defining module. The PostgreSQL stores need the
``postgres`` extra: they are imported when first named here, and without
the extra that import says which pip command to run.
"""

from typing import Any

from eventfold.aggregate import Aggregate
from eventfold.commands import (
    AsyncCommandHandler,
    CommandHandler,
    CommandResult,
    HistoryEntry,
    Loaded,
)
from eventfold.decider import Decider
from eventfold.errors import (
    CheckpointRegression,
    ConcurrencyError,
    ConfigurationError,
    EventfoldError,
    IdempotencyKeyReused,
    InvalidEvent,
    InvalidRequest,
    LeaseHeld,
    LeaseLost,
    ProjectionBehind,
    ProjectionStopped,
    SerializationError,
    StoreClosed,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    StreamDeleted,
    StreamNotFound,
    TransactionConflict,
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
    Holdup,
    Snapshot,
    StreamAppend,
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
    "CheckpointRegression",
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
    "HistoryEntry",
    "Holdup",
    "IdempotencyKeyReused",
    "InvalidEvent",
    "InvalidRequest",
    "LeaseHeld",
    "LeaseLost",
    "Loaded",
    "MemoryEventStore",
    "NO_STREAM",
    "NewEvent",
    "ProjectionBehind",
    "ProjectionStopped",
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
    "StreamAppend",
    "StreamDeleted",
    "StreamInfo",
    "StreamNotFound",
    "TransactionConflict",
    "TypeRegistry",
    "UnknownEventType",
    "WrongExpectedVersion",
    "caused_by",
    "default_registry",
    "event_type",
    "uuid7",
]

# Named here, imported on first use: they need the postgres extra (PEP 562).
_LAZY = {
    "AsyncPostgresEventStore": "eventfold.store.postgres",
    "PostgresEventStore": "eventfold.store.postgres",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'eventfold' has no attribute {name!r}")
    import importlib  # noqa: PLC0415 - only when a PostgreSQL store is named

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, *_LAZY])
