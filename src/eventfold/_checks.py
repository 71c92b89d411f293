"""Argument checks every part of eventfold shares: counts, positions, flags, durations.

Each raises InvalidRequest (or the ``error`` class given, ConfigurationError
for options) naming the argument, before anything is done.
"""

from __future__ import annotations

import math
from typing import Final

from eventfold.errors import InvalidRequest

__all__ = [
    "MAX_POSITION",
    "MAX_STREAM_NAME",
    "MAX_VERSION",
    "check_bool",
    "check_non_negative",
    "check_position",
    "check_seconds",
    "short_repr",
]


MAX_STREAM_NAME = 512


#: The largest version, limit or count any backend stores (SQLite's and
#: PostgreSQL's 64-bit signed integers).
MAX_VERSION: Final = 2**63 - 1


#: The largest position any backend issues (PostgreSQL's are 128-bit pairs).
MAX_POSITION: Final = 2**128 - 1


def check_non_negative(
    name: str,
    value: object,
    *,
    minimum: int = 0,
    maximum: int | None = MAX_VERSION,
    error: type[Exception] = InvalidRequest,
) -> int:
    """Validate an int argument such as a version or count (at most 2**63-1).

    ``maximum=None`` leaves it unbounded (a limit: more than exists means all).
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        if maximum is None:
            bound = f"an int >= {minimum}"
        else:
            top = "2**63-1" if maximum == MAX_VERSION else str(maximum)
            bound = f"an int from {minimum} to {top}"
        raise error(f"{name} must be {bound}, not {short_repr(value)}")
    return value


def check_position(name: str, value: object) -> int:
    """Validate a global-log position argument: an int >= 0.

    Positions are opaque cursors, so any size is valid: one beyond every
    position a backend can issue is after every event (reads find nothing).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(f"{name} must be a position (an int >= 0), not {short_repr(value)}")
    return value


def check_wait(projection: object, position: object, timeout: object) -> None:
    """Validate ``wait_for``'s arguments: a projection's name, a position, seconds >= 0."""
    if not isinstance(projection, str) or not projection:
        raise InvalidRequest(
            f"projection must be a projection's name (a non-empty str), not "
            f"{short_repr(projection)}"
        )
    check_position("position", position)
    check_seconds("timeout", timeout, allow_zero=True)


def check_bool(name: str, value: object, *, error: type[Exception] = InvalidRequest) -> bool:
    """Validate a flag: only True or False (a flag that destroys data takes no "no").

    ``error`` is the class raised: InvalidRequest for call arguments,
    ConfigurationError for a store's or a runner's options.
    """
    if not isinstance(value, bool):
        raise error(f"{name} must be True or False, not {short_repr(value)}")
    return value


def check_seconds(
    name: str,
    value: object,
    *,
    allow_zero: bool = False,
    error: type[Exception] = InvalidRequest,
) -> float:
    """Validate a duration: a finite int or float > 0 (>= 0 with ``allow_zero``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        sign = ">= 0" if allow_zero else "> 0"
        raise error(f"{name} must be finite seconds {sign}, not {short_repr(value)}")
    return float(value)


def short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
