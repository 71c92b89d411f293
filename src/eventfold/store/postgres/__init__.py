"""The PostgreSQL event store: sync and async flavours, and the schema migration.

Needs the ``postgres`` extra (``pip install 'eventfold[postgres]'``); importing
this module without psycopg raises an ImportError that says so. Create the
schema once with :func:`migrate` (or :func:`async_migrate`) before use.
"""

from eventfold.store.postgres._statements import LATEST_SCHEMA_VERSION
from eventfold.store.postgres._store import PostgresEventStore, migrate
from eventfold.store.postgres._store_async import AsyncPostgresEventStore
from eventfold.store.postgres._store_async import migrate as async_migrate

__all__ = [
    "AsyncPostgresEventStore",
    "LATEST_SCHEMA_VERSION",
    "PostgresEventStore",
    "async_migrate",
    "migrate",
]
