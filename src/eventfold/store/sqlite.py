"""The SQLite event store (embedded default): sync and async flavours."""

from eventfold._async.sqlite import AsyncSqliteEventStore
from eventfold._sync.sqlite import SqliteEventStore
from eventfold.store._sqlite_db import Durability

__all__ = ["AsyncSqliteEventStore", "Durability", "SqliteEventStore"]
