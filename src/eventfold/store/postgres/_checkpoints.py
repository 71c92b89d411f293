"""Projection bookkeeping in PostgreSQL (needs the ``postgres`` extra).

Checkpoints, leases and dead letters live in the store's schema (schema
version 3). Positions exceed bigint, so they are stored as ``numeric`` and
passed as text. Lease times come from the database clock, so runners on
different machines agree on when a lease has run out.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from typing import Any

import psycopg

from eventfold.errors import ConfigurationError
from eventfold.events import RecordedEvent
from eventfold.store._checkpoints import Checkpoint, DeadLetter, wait_in_slices
from eventfold.store._rules import us_to_datetime
from eventfold.store.postgres._statements import split_position, translate_errors
from eventfold.store.postgres._store import PostgresEventStore

__all__ = ["PostgresEventStore", "PostgresProjectionBackend"]


class PostgresProjectionBackend:
    """Checkpoints, leases and dead letters in the store's PostgreSQL schema."""

    transactional = True

    def __init__(self, store: PostgresEventStore) -> None:
        self._store = store
        self._sql = store._sql
        self._errors = translate_errors(store.schema)
        self._listener: psycopg.Connection[Any] | None = None

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        # Pipeline mode sends a batch's statements without waiting for each
        # answer: one round trip per batch instead of one per event. An error
        # then surfaces at the end of the batch, which the runner already
        # handles by redoing the batch event by event.
        with (
            self._errors,
            self._store._connection() as conn,
            conn.transaction(),
            conn.pipeline(),
        ):
            yield conn

    def _one(self, name: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        with self._errors, self._store._connection() as conn:
            row = conn.execute(self._sql[name], params).fetchone()
        return None if row is None else tuple(row)

    def get(self, name: str) -> Checkpoint | None:
        row = self._one("checkpoint_get", {"name": name})
        return None if row is None else Checkpoint(int(row[0]), row[1], int(row[2] or 0))

    def names(self) -> list[str]:
        with self._errors, self._store._connection() as conn:
            return [row[0] for row in conn.execute(self._sql["checkpoint_list"]).fetchall()]

    def acquire(self, name: str, owner: str, ttl: float) -> bool:
        row = self._one("checkpoint_acquire", {"name": name, "owner": owner, "ttl": ttl})
        return row is not None and row[0] == owner

    def release(self, name: str, owner: str) -> None:
        with self._errors, self._store._connection() as conn:
            conn.execute(self._sql["checkpoint_release"], {"name": name, "owner": owner})

    def owns(self, name: str, owner: str) -> bool:
        checkpoint = self.get(name)
        return checkpoint is not None and checkpoint.owner == owner

    def advance(self, conn: Any, name: str, position: int, owner: str, ttl: float) -> bool:
        params = {"name": name, "position": str(position), "owner": owner, "ttl": ttl}
        return conn.execute(self._sql["checkpoint_advance"], params).fetchone() is not None

    def dead_letter(self, conn: Any, name: str, event: RecordedEvent, error: str) -> None:
        conn.execute(
            self._sql["dead_letter_add"],
            {
                "name": name,
                "position": str(event.position),
                "event_id": event.id,
                "stream": event.stream,
                "version": event.version,
                "type": event.type,
                "error": error,
            },
        )

    def dead_letters(self, name: str) -> list[DeadLetter]:
        with self._errors, self._store._connection() as conn:
            rows = conn.execute(self._sql["dead_letter_list"], {"name": name}).fetchall()
        return [
            DeadLetter(
                int(position),
                bytes(event_id),
                stream,
                version,
                type_,
                error,
                us_to_datetime(at),
                schema_version,
                None if data is None else bytes(data),
                None if metadata is None else bytes(metadata),
            )
            for (
                position,
                event_id,
                stream,
                version,
                type_,
                error,
                at,
                schema_version,
                data,
                metadata,
            ) in rows
        ]

    def reset(self, conn: Any, name: str, owner: str) -> bool:
        params = {"name": name, "owner": owner}
        if conn.execute(self._sql["checkpoint_reset"], params).fetchone() is None:
            return False
        conn.execute(self._sql["dead_letter_clear"], {"name": name})
        return True

    def backlog(self, after: int) -> tuple[int, datetime | None]:
        tx, seq = split_position(after)
        row = self._one("count_after", {"tx": str(tx), "seq": seq})
        if row is None:
            return 0, None
        return int(row[0]), (us_to_datetime(row[1]) if row[1] is not None else None)

    def wait(self, after: int, timeout: float, stop: threading.Event) -> None:
        with self._errors:
            listener, fresh = self._listen()
            # A commit after LISTEN is announced. Only a new listener can have
            # missed one (made after the run's last read, before LISTEN): check
            # the log then, not on every wait (a query per wake saved).
            if fresh and self._store.last_position() > after:
                return

            def notified(seconds: float) -> bool:
                with closing(listener.notifies(timeout=seconds, stop_after=1)) as notifies:
                    return next(notifies, None) is not None

            wait_in_slices(stop, timeout, notified)

    def _listen(self) -> tuple[psycopg.Connection[Any], bool]:
        """The LISTENing connection, and whether it was (re)opened just now."""
        if self._listener is not None and not self._listener.closed and not self._listener.broken:
            return self._listener, False
        conninfo = self._store._conninfo
        if conninfo is None:
            raise ConfigurationError(
                "following a PostgreSQL store live needs a pool whose conninfo is a string"
            )
        # Set up like the store's own connections (connect timeout, keepalives,
        # tcp_user_timeout): a reconnect through a dead network fails in bounded time.
        listener = self._store._connect()
        listener.stall_timeout = None  # waiting for notifications is not a stall
        self._listener = listener
        listener.execute(self._sql["listen"])
        return self._listener, True

    def set_alias(self, alias: str, target: str) -> None:
        with self._errors, self._store._connection() as conn:
            conn.execute(self._sql["alias_set"], {"alias": alias, "target": target})

    def get_alias(self, alias: str) -> str | None:
        row = self._one("alias_get", {"alias": alias})
        return None if row is None else str(row[0])

    def close(self) -> None:
        """Close the LISTEN connection."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
