"""The SQLite event store (embedded default): sync and async flavours."""

from eventfold.store.sqlite._db import Durability
from eventfold.store.sqlite._store import SqliteEventStore
from eventfold.store.sqlite._store_async import AsyncSqliteEventStore

__all__ = ["AsyncSqliteEventStore", "Durability", "SqliteEventStore"]
