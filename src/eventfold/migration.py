"""Offline stream migration (sync and async); see :func:`migrate_stream`."""

from eventfold._async.migration import MIGRATED_FROM, async_migrate_stream
from eventfold._sync.migration import migrate_stream

__all__ = ["MIGRATED_FROM", "async_migrate_stream", "migrate_stream"]
