"""Time as stores keep it: integer microseconds since the epoch, UTC."""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["datetime_to_us", "now_us", "us_to_datetime"]


def now_us() -> int:
    """Current UTC time in integer microseconds since the epoch."""
    return time.time_ns() // 1000


def datetime_to_us(value: datetime) -> int:
    """Convert an aware datetime to integer microseconds since the epoch (exact)."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def us_to_datetime(us: int) -> datetime:
    """Convert stored microseconds to an aware UTC datetime."""
    return datetime.fromtimestamp(us / 1_000_000, UTC)
