"""A clock and event id source that tests control (``ManualClock``).

::

    with ManualClock(datetime(2026, 1, 1, tzinfo=UTC)) as clock:
        store.append("s", [Deposited(amount=1)])   # recorded at 2026-01-01 00:00
        clock.advance(timedelta(days=1))
        store.append("s", [Deposited(amount=2)])   # a day later

Inside the block, the memory and SQLite stores record the clock's time
(PostgreSQL records its server's), leases and status ages read it, and
event ids (UUIDv7) take their time and random bits from it: the same test
makes the same ids and times on every run. Each reading moves the clock on
by ``tick`` (one microsecond by default), so times still order events.
"""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta
from types import TracebackType

from eventfold._clock import Source, datetime_to_us, set_source, us_to_datetime
from eventfold.errors import InvalidRequest
from eventfold.events import restart_ids

__all__ = ["ManualClock"]

_START = datetime(2026, 1, 1, tzinfo=UTC)


class ManualClock:
    """Time that moves only when told (and by ``tick`` per reading); seeded ids.

    :param start: the first time read (an aware datetime).
    :param tick: how far each reading moves the clock on (zero: frozen).
    :param seed: seeds the random part of event ids.
    """

    def __init__(
        self,
        start: datetime = _START,
        *,
        tick: timedelta = timedelta(microseconds=1),
        seed: int = 0,
    ) -> None:
        if start.tzinfo is None:
            raise InvalidRequest(f"start must be an aware datetime, not {start!r}")
        if tick < timedelta(0):
            raise InvalidRequest(f"tick cannot be negative: {tick!r}")
        self._ns = datetime_to_us(start) * 1000
        self._tick_ns = (tick // timedelta(microseconds=1)) * 1000
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._previous: Source | None = None

    def now(self) -> datetime:
        """The clock's time (without moving it)."""
        with self._lock:
            return us_to_datetime(self._ns // 1000)

    def advance(self, by: timedelta) -> None:
        """Move the clock forward by ``by``."""
        if by < timedelta(0):
            raise InvalidRequest(f"a clock only moves forward, not by {by!r}")
        with self._lock:
            self._ns += (by // timedelta(microseconds=1)) * 1000

    def _time_ns(self) -> int:
        with self._lock:
            value = self._ns
            self._ns += self._tick_ns
            return value

    def _random_bytes(self, count: int) -> bytes:
        with self._lock:
            return self._random.randbytes(count)

    def __enter__(self) -> ManualClock:
        if self._previous is not None:
            raise InvalidRequest("this clock is in use already")
        self._previous = set_source((self._time_ns, self._random_bytes))
        restart_ids()  # ids from this clock only, as on every run
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        previous, self._previous = self._previous, None
        set_source(previous)
        restart_ids()
