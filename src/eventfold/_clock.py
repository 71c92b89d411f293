"""Time as stores keep it: integer microseconds since the epoch, UTC."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime

__all__ = [
    "Source",
    "datetime_to_us",
    "now_ns",
    "now_us",
    "random_bytes",
    "set_source",
    "us_to_datetime",
]

#: Where time and randomness come from: (nanoseconds since the epoch, n random bytes).
Source = tuple[Callable[[], int], Callable[[int], bytes]]
_SYSTEM: Source = (time.time_ns, os.urandom)
_source: Source = _SYSTEM


def now_ns() -> int:
    """Current UTC time in integer nanoseconds since the epoch (event ids use it)."""
    return _source[0]()


def now_us() -> int:
    """Current UTC time in integer microseconds since the epoch."""
    return _source[0]() // 1000


def random_bytes(count: int) -> bytes:
    """``count`` random bytes (the random part of event ids)."""
    return _source[1](count)


def set_source(source: Source | None) -> Source:
    """Take time and randomness from ``source`` (None: the system's); return the previous.

    For tests (``eventfold.testing.TestClock``): stored times come from it on
    the memory and SQLite stores (PostgreSQL records its server's time).
    """
    global _source
    previous, _source = _source, source or _SYSTEM
    return previous


def datetime_to_us(value: datetime) -> int:
    """Convert an aware datetime to integer microseconds since the epoch (exact)."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def us_to_datetime(us: int) -> datetime:
    """Convert stored microseconds to an aware UTC datetime."""
    return datetime.fromtimestamp(us / 1_000_000, UTC)
