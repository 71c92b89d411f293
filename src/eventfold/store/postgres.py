"""The PostgreSQL event store: sync and async flavours, and the schema migration.

Needs the ``postgres`` extra (``pip install 'eventfold[postgres]'``); importing
this module without psycopg raises an ImportError that says so. Create the
schema once with :func:`migrate` (or :func:`async_migrate`) before use.
"""

from eventfold._async.postgres import AsyncPostgresEventStore
from eventfold._async.postgres import migrate as async_migrate
from eventfold._sync.postgres import PostgresEventStore, migrate
from eventfold.store._postgres import LATEST_SCHEMA_VERSION

__all__ = [
    "AsyncPostgresEventStore",
    "LATEST_SCHEMA_VERSION",
    "PostgresEventStore",
    "async_migrate",
    "migrate",
]
