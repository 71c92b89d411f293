"""Offline stream migration (sync and async); see :func:`migrate_stream`."""

from eventfold._evolution import migrate_stream
from eventfold._evolution_async import MIGRATED_FROM, async_migrate_stream

__all__ = ["MIGRATED_FROM", "async_migrate_stream", "migrate_stream"]
