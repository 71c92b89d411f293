"""The in-memory event store (reference semantics): sync and async flavours."""

from eventfold.store.memory._store import MemoryEventStore
from eventfold.store.memory._store_async import AsyncMemoryEventStore

__all__ = ["AsyncMemoryEventStore", "MemoryEventStore"]
