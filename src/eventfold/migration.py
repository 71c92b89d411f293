"""Deprecated alias of :mod:`eventfold.evolution` (import from there)."""

import warnings

from eventfold.evolution import MIGRATED_FROM, async_migrate_stream, migrate_stream

__all__ = ["MIGRATED_FROM", "async_migrate_stream", "migrate_stream"]

warnings.warn(
    "eventfold.migration is now eventfold.evolution; the old name will be removed",
    DeprecationWarning,
    stacklevel=2,
)
