"""SQLite transaction bodies, shared by the sync and async SQLite stores.

sqlite3 has no asyncio API, so the I/O is written once here as plain
functions: the sync store calls them directly, the async store runs them on
worker threads. Every sqlite3 exception is translated in :class:`_translate`.

Concurrency: each thread gets its own connection. Appends run in
``BEGIN IMMEDIATE`` transactions, which take SQLite's single write lock
before reading the stream version, so the expected-version check and the
insert are one atomic step, across threads and across processes sharing the
file. Threads of one process first queue on a Python lock, which hands the
write lock over without SQLite's sleeping busy handler; other processes wait
through ``busy_timeout``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Literal

from eventfold.errors import (
    ConfigurationError,
    StoreClosed,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    StreamDeleted,
    WrongExpectedVersion,
)
from eventfold.store._common import (
    AppendResult,
    EncodedEvent,
    Expected,
    InlineHook,
    Row,
    decode_deletion,
    deletion_version,
    encode_deletion,
    expectation_met,
    idempotent_result,
    now_us,
    restore_needed,
    truncation_point,
)
from eventfold.store._sql import load_statements

__all__ = ["Durability", "SqliteDatabase"]

SQL = load_statements("sqlite")
SCHEMA_VERSION = 4

#: ``full``: an acknowledged append survives power loss (fsync per commit).
#: ``normal``: survives a crash of the process; the last commits may be lost
#: on power loss or OS crash. ``off``: no fsync at all (tests, bulk loads).
Durability = Literal["full", "normal", "off"]
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}


class _translate:
    """Translate sqlite3 exceptions into the eventfold hierarchy (the one boundary)."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or not isinstance(exc, sqlite3.Error):
            return
        message = str(exc)
        if isinstance(exc, sqlite3.OperationalError):
            if "locked" in message or "busy" in message:
                raise StoreTimeout(
                    f"SQLite database {self.path!r} stayed locked by another writer "
                    "past busy_timeout; retry, or raise busy_timeout"
                ) from exc
            if "unable to open" in message or "disk I/O" in message:
                raise StoreUnavailable(
                    f"cannot open SQLite database {self.path!r}: {message}"
                ) from exc
        if isinstance(exc, sqlite3.ProgrammingError) and "closed" in message:
            raise StoreClosed(f"SQLite store {self.path!r} is closed") from exc
        raise StoreError(f"SQLite error on {self.path!r}: {message}") from exc


class SqliteDatabase:
    """Connections to one SQLite file and the store's transactions on it."""

    def __init__(
        self, path: str | os.PathLike[str], *, durability: Durability, busy_timeout: float
    ) -> None:
        if durability not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"durability must be one of {sorted(_SYNCHRONOUS)}, not {durability!r}"
            )
        if not isinstance(busy_timeout, (int, float)) or busy_timeout < 0:
            raise ConfigurationError(f"busy_timeout must be seconds >= 0, not {busy_timeout!r}")
        self.path = os.fspath(path)
        if self.path != ":memory:" and Path(self.path).is_dir():
            raise ConfigurationError(f"SQLite path {self.path!r} is a directory, not a file")
        self.durability = durability
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        # Each connection with the thread that owns it, so that connections of
        # finished threads can be closed instead of piling up.
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        self._translate = _translate(self.path)
        self._migrate()

    # -- connections --------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        with self._translate:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # explicit BEGIN/COMMIT only
                check_same_thread=False,  # close() may run on another thread
                cached_statements=64,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS[self.durability]}")
        with self._connections_lock:
            if self._closed:
                conn.close()
                raise StoreClosed(f"SQLite store {self.path!r} is closed")
            finished = [c for t, c in self._connections if not t.is_alive()]
            self._connections = [(t, c) for t, c in self._connections if t.is_alive()]
            self._connections.append((threading.current_thread(), conn))
        for stale in finished:
            stale.close()
        return conn

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _migrate(self) -> None:
        conn = self.connection()
        with self._translate:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"{self.path!r} has eventfold schema version {version}; this eventfold "
                    f"knows up to {SCHEMA_VERSION}: upgrade eventfold"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                with self._write_transaction(conn):
                    # Re-check under the write lock: another process may have migrated.
                    (current,) = conn.execute("PRAGMA user_version").fetchone()
                    if current >= target:
                        continue
                    for statement in SQL[f"migration_{target}"].split(";\n"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={target}")

    def close(self) -> None:
        """Close every connection this database opened."""
        with self._connections_lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for _, conn in connections:
            conn.close()

    # -- transactions -------------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection for reads outside a transaction (errors translated)."""
        with self._translate:
            yield self.connection()

    @contextmanager
    def write_transaction(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection inside a write transaction (errors translated).

        For read models kept in the same file as the events: what is written
        through the connection commits or rolls back together.
        """
        conn = self.connection()
        with self._translate, self._write_transaction(conn):
            yield conn

    @contextmanager
    def _write_transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def append(
        self,
        stream: str,
        batch: list[EncodedEvent],
        expected: Expected,
        inline: InlineHook | None = None,
    ) -> AppendResult:
        """Check, then insert ``batch`` in one write transaction.

        ``inline`` is called in that transaction with the connection and the
        rows written; if it raises, the append is rolled back.
        """
        conn = self.connection()
        # Written out rather than with _write_transaction: this is the hot path.
        with self._translate, self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = self._append_in_transaction(conn, stream, batch, expected, inline)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    def _append_in_transaction(
        self,
        conn: sqlite3.Connection,
        stream: str,
        batch: list[EncodedEvent],
        expected: Expected,
        inline: InlineHook | None,
    ) -> AppendResult:
        actual, deleted = conn.execute(SQL["stream_state"], (stream,)).fetchone()
        if deleted:
            retried = self._find_batch(conn, stream, batch)
            if retried is not None:
                return retried
            raise StreamDeleted(stream, self._is_hard_deleted(conn, stream))
        if not expectation_met(expected, actual):
            # A retry of a batch already stored moved the stream on: not a conflict.
            retried = self._find_batch(conn, stream, batch)
            if retried is not None:
                return retried
            raise WrongExpectedVersion(stream, expected, actual)
        if not batch:
            return AppendResult(stream, actual + 1, actual, 0)
        recorded_at = now_us()
        # Insert parameters; with the position in front they are also the
        # rows that inline projections receive.
        values = [
            (stream, actual + i, e.id, e.type, e.schema_version, e.data, e.metadata, recorded_at)
            for i, e in enumerate(batch, 1)
        ]
        try:
            if len(values) == 1:
                position = conn.execute(SQL["insert_event"], values[0]).lastrowid or 0
            else:
                conn.executemany(SQL["insert_event"], values)
                (position,) = conn.execute("SELECT last_insert_rowid()").fetchone()
        except sqlite3.IntegrityError:
            # The version was checked under the write lock, so this is an event id
            # that is already stored: either a retried batch or a reused id.
            retried = self._find_batch(conn, stream, batch)
            if retried is not None:
                return retried
            raise
        if inline is not None:
            # Positions are consecutive: this transaction holds the write lock.
            first = position - len(values) + 1
            inline(conn, [(first + i, *value) for i, value in enumerate(values)])
        return AppendResult(stream, actual + 1, actual + len(batch), position)

    def _find_batch(
        self, conn: sqlite3.Connection, stream: str, batch: list[EncodedEvent]
    ) -> AppendResult | None:
        found: dict[bytes, tuple[str, int, int]] = {}
        for e in batch:
            row = conn.execute(SQL["find_event_id"], (e.id,)).fetchone()
            if row is not None:
                found[e.id] = row
        return idempotent_result(stream, batch, found)

    def read_page(self, stream: str, cursor: int, backwards: bool, count: int) -> list[Row]:
        """Up to ``count`` rows of ``stream`` starting at version ``cursor``."""
        sql = SQL["read_backward"] if backwards else SQL["read_forward"]
        with self._translate:
            return self.connection().execute(sql, (stream, cursor, count)).fetchall()

    def read_all_page(
        self, after: int, types: list[str] | None, prefix: str | None, count: int
    ) -> list[Row]:
        """Up to ``count`` rows of the global log after ``after``."""
        with self._translate:
            conn = self.connection()
            if types is None and prefix is None:
                return conn.execute(SQL["read_all"], (after, count)).fetchall()
            types_json = json.dumps(types) if types is not None else None
            return conn.execute(
                SQL["read_all_filtered"], (after, types_json, prefix, count)
            ).fetchall()

    def stream_info(
        self, stream: str
    ) -> tuple[int, int | None, bytes | None, bytes | None, bytes | None]:
        """(version, first stored version, metadata, deletion, truncation) of ``stream``."""
        with self._translate:
            row: tuple[int, int | None, bytes | None, bytes | None, bytes | None]
            row = self.connection().execute(SQL["stream_info"], (stream,)).fetchone()
            return row

    def find_event(self, event_id: bytes) -> Row | None:
        """The row of the event ``event_id`` unless its stream is deleted."""
        with self._translate:
            row: Row | None = self.connection().execute(SQL["find_event"], (event_id,)).fetchone()
            return row

    def _is_hard_deleted(self, conn: sqlite3.Connection, stream: str) -> bool:
        info = conn.execute(SQL["stream_info"], (stream,)).fetchone()
        deletion = decode_deletion(info[3])
        return deletion is not None and deletion[0].hard

    def _state(self, conn: sqlite3.Connection, stream: str) -> tuple[int, bytes | None]:
        version, _, _, deletion, _ = conn.execute(SQL["stream_info"], (stream,)).fetchone()
        return version, deletion

    def delete_stream(self, stream: str, hard: bool, by: str, reason: str) -> None:
        """Mark ``stream`` deleted; erase its events too when ``hard``."""
        conn = self.connection()
        with self._translate, self._write_transaction(conn):
            version = deletion_version(stream, *self._state(conn, stream), hard)
            if version is None:
                return
            conn.execute(SQL["mark_deleted"], (stream, encode_deletion(by, reason, hard, version)))
            if hard:
                conn.execute(SQL["erase_stream"], (stream,))

    def restore_stream(self, stream: str) -> None:
        """Clear a soft delete."""
        conn = self.connection()
        with self._translate, self._write_transaction(conn):
            if restore_needed(stream, *self._state(conn, stream)):
                conn.execute(SQL["restore_stream"], (stream,))

    def truncate_stream(self, stream: str, before: int, by: str, reason: str) -> int:
        """Erase events older than ``before`` (never the newest); return the count."""
        conn = self.connection()
        with self._translate, self._write_transaction(conn):
            keep_from = truncation_point(stream, *self._state(conn, stream), before)
            erased: int = conn.execute(SQL["erase_before"], (stream, keep_from)).rowcount
            if erased:
                record = encode_deletion(by, reason, True, keep_from)
                conn.execute(SQL["mark_truncated"], (stream, keep_from, record))
            return erased

    def save_snapshot(
        self, stream: str, version: int, state_type: str, schema_version: int, data: bytes
    ) -> None:
        """Insert or replace the snapshot of (stream, version)."""
        params = (stream, version, state_type, schema_version, data, now_us())
        with self._translate, self._write_lock:
            self.connection().execute(SQL["save_snapshot"], params)

    def load_snapshot(
        self, stream: str, max_version: int
    ) -> tuple[int, str, int, bytes, int] | None:
        """(version, state_type, schema_version, data, recorded_at) of the newest match."""
        with self._translate:
            row: tuple[int, str, int, bytes, int] | None = (
                self.connection().execute(SQL["load_snapshot"], (stream, max_version)).fetchone()
            )
            return row

    def delete_snapshots(
        self, stream: str | None, state_type: str | None, keep_schema_version: int | None
    ) -> int:
        """Delete matching snapshots; return how many."""
        params = (stream, state_type, keep_schema_version)
        with self._translate, self._write_lock:
            deleted: int = self.connection().execute(SQL["delete_snapshots"], params).rowcount
            return deleted

    def set_stream_metadata(self, stream: str, metadata: bytes | None) -> None:
        """Store the stream's metadata."""
        with self._translate, self._write_lock:
            self.connection().execute(SQL["set_stream_metadata"], (stream, metadata))

    def last_position(self) -> int:
        """Highest committed position."""
        with self._translate:
            (position,) = self.connection().execute(SQL["last_position"]).fetchone()
            return int(position)
