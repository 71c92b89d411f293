"""The SQLite checkpoint operations: plain functions on a :class:`SqliteDatabase`.

sqlite3 has no asyncio API: the sync checkpoints call these directly, the
async ones on the store's worker threads (as the store's own operations do).
Those that write in a caller's transaction take its handle.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from eventfold._acompat import FIRST_POLL, next_poll
from eventfold._clock import now_us, us_to_datetime
from eventfold.errors import CheckpointRegression
from eventfold.events import RecordedEvent
from eventfold.store._rows import dead_letters_from_rows
from eventfold.store._types import Checkpoint, DeadLetter
from eventfold.store.sqlite._db import SQL, SqliteDatabase

__all__ = [
    "acquire",
    "advance",
    "backlog",
    "dead_letter",
    "dead_letters",
    "get",
    "get_alias",
    "has_news",
    "names",
    "release",
    "reset",
    "set_alias",
]


def get(db: SqliteDatabase, name: str) -> Checkpoint | None:
    with db.reading() as conn:
        row = conn.execute(SQL["checkpoint_get"], (name,)).fetchone()
    return None if row is None else Checkpoint(row[0], row[1], row[2])


def names(db: SqliteDatabase) -> list[str]:
    with db.reading() as conn:
        return [row[0] for row in conn.execute(SQL["checkpoint_list"]).fetchall()]


def acquire(db: SqliteDatabase, name: str, owner: str, ttl: float) -> bool:
    now = now_us()
    with db.write_transaction() as conn:
        conn.execute(SQL["checkpoint_acquire"], (name, owner, now, now + int(ttl * 1e6)))
        row = conn.execute(SQL["checkpoint_get"], (name,)).fetchone()
    return row is not None and row[1] == owner


def release(db: SqliteDatabase, name: str, owner: str) -> None:
    with db.write_transaction() as conn:
        conn.execute(SQL["checkpoint_release"], (name, owner))


def advance(
    db: SqliteDatabase, handle: Any, name: str, position: int, owner: str, ttl: float
) -> bool:
    now = now_us()
    params = (name, position, owner, now, now + int(ttl * 1e6))
    if db.execute_in(handle, SQL["checkpoint_advance"], params).rowcount:
        return True
    row = db.execute_in(handle, SQL["checkpoint_get"], (name,)).fetchone()
    if row is None or row[1] != owner:
        return False  # the lease is not ours (any more)
    raise CheckpointRegression(name, row[0], position)


def reset(db: SqliteDatabase, handle: Any, name: str, owner: str) -> bool:
    if not db.execute_in(handle, SQL["checkpoint_reset"], (name, owner, now_us())).rowcount:
        return False
    db.execute_in(handle, SQL["dead_letter_clear"], (name,))
    return True


def dead_letter(
    db: SqliteDatabase, handle: Any, name: str, event: RecordedEvent, error: str
) -> None:
    params = (
        name,
        event.position,
        event.id.bytes,
        event.stream,
        event.version,
        event.type,
        error,
        now_us(),
    )
    db.execute_in(handle, SQL["dead_letter_add"], params)


def dead_letters(db: SqliteDatabase, name: str) -> list[DeadLetter]:
    with db.reading() as conn:
        rows = conn.execute(SQL["dead_letter_list"], (name,)).fetchall()
    return dead_letters_from_rows(rows)


def backlog(db: SqliteDatabase, after: int) -> tuple[int, datetime | None]:
    with db.reading() as conn:
        count, oldest = conn.execute(SQL["count_after"], (after,)).fetchone()
    return count, (us_to_datetime(oldest) if oldest is not None else None)


def has_news(db: SqliteDatabase, after: int, seconds: float, start: list[int | None]) -> bool:
    """Poll for news for up to ``seconds``: another connection's commit, or events after
    ``after``. ``start`` keeps the data_version seen first (one cheap statement a poll,
    backing off from 1 ms to 50 ms; each poll is one translated use of the connection).
    A commit to the file from this process cuts the pause short."""
    deadline = time.monotonic() + seconds
    pause = FIRST_POLL
    commits = db.commits
    while True:
        seen = commits.count
        with db.reading() as conn:
            (version,) = conn.execute(SQL["data_version"]).fetchone()
            if start[0] is None:
                start[0] = version
            elif version != start[0]:
                return True
            # Commits through this very connection do not change data_version.
            (last,) = conn.execute(SQL["last_position"]).fetchone()
        if last > after:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        commits.wait(seen, min(pause, remaining))  # a poll interval, or a commit here
        pause = next_poll(pause)


def set_alias(db: SqliteDatabase, alias: str, target: str) -> None:
    with db.write_transaction() as conn:
        conn.execute(SQL["alias_set"], (alias, target))


def get_alias(db: SqliteDatabase, alias: str) -> str | None:
    with db.reading() as conn:
        row = conn.execute(SQL["alias_get"], (alias,)).fetchone()
    return None if row is None else str(row[0])
