"""The in-memory event store (reference semantics): sync and async flavours."""

from eventfold._async.memory import AsyncMemoryEventStore
from eventfold._sync.memory import MemoryEventStore

__all__ = ["AsyncMemoryEventStore", "MemoryEventStore"]
