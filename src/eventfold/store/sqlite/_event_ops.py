"""The SQLite store's operations on events, streams and snapshots.

Plain functions over a :class:`~eventfold.store.sqlite._db.SqliteDatabase`
(its connections and transactions): the sync store calls them directly, the
async store runs them on worker threads. Each takes this thread's
connection for a read, or a write transaction, from the database; the rules
(expectations, idempotency, lifecycle) come from :mod:`eventfold.store._rules`.
"""

from __future__ import annotations

import json
import os
import sqlite3

from eventfold._clock import now_us
from eventfold.errors import InvalidRequest, StreamDeleted, WrongExpectedVersion
from eventfold.store._rows import EncodedEvent, InlineHook, Row, SnapshotRow
from eventfold.store._rules import (
    deletion_version,
    encode_deletion,
    expectation_met,
    idempotent_result,
    is_hard_deletion,
    nothing_appended,
    restore_needed,
    retried_many,
    truncation_point,
)
from eventfold.store._types import AppendResult, Expected
from eventfold.store.sqlite._db import SQL, Handle, SqliteDatabase

__all__ = [
    "append",
    "append_in",
    "append_many",
    "delete_snapshots",
    "delete_stream",
    "find_event",
    "join",
    "last_position",
    "leave",
    "list_snapshots",
    "load_snapshot",
    "read_all_page",
    "read_page",
    "restore_stream",
    "save_snapshot",
    "set_stream_metadata",
    "stream_info",
    "truncate_stream",
]


def append(
    db: SqliteDatabase,
    stream: str,
    batch: list[EncodedEvent],
    expected: Expected,
    inline: InlineHook | None = None,
) -> AppendResult:
    """Check, then insert ``batch`` in one write transaction.

    ``inline`` is called in that transaction with the connection and the
    rows written; if it raises, the append is rolled back.
    """
    # Written out rather than with _write: this is the hot path.
    handle = db.begin_write("append")
    try:
        result = _append_in_transaction(handle.conn, stream, batch, expected, inline)
    except BaseException as exc:
        db.end_write(handle, commit=False)
        db.translate.raise_for(exc)
        raise
    db.end_write(handle, commit=True)
    return result


def append_many(
    db: SqliteDatabase,
    appends: list[tuple[str, list[EncodedEvent], Expected]],
    inline: InlineHook | None = None,
) -> list[AppendResult]:
    """Append to several streams in one write transaction: all batches or none.

    ``inline`` runs once per stream's batch, in that transaction.
    """
    with db.write("append_many") as conn:
        retried = [_find_batch(conn, stream, batch) for stream, batch, _ in appends]
        if retried_many(appends, retried):
            return [
                result if result is not None else _empty_result(conn, stream)
                for (stream, _, _), result in zip(appends, retried, strict=True)
            ]
        # No batch is stored yet and the write lock is held: each append below
        # checks and writes its stream; the first refusal rolls back them all.
        return [
            _append_in_transaction(conn, stream, batch, expected, inline)
            for stream, batch, expected in appends
        ]


def _empty_result(conn: sqlite3.Connection, stream: str) -> AppendResult:
    actual, _ = conn.execute(SQL["stream_state"], (stream,)).fetchone()
    return nothing_appended(stream, actual)


def _append_in_transaction(
    conn: sqlite3.Connection,
    stream: str,
    batch: list[EncodedEvent],
    expected: Expected,
    inline: InlineHook | None,
) -> AppendResult:
    actual, deleted = conn.execute(SQL["stream_state"], (stream,)).fetchone()
    if deleted:
        retried = _find_batch(conn, stream, batch)
        if retried is not None:
            return retried
        raise StreamDeleted(stream, _is_hard_deleted(conn, stream))
    if not expectation_met(expected, actual):
        # A retry of a batch already stored moved the stream on: not a conflict.
        retried = _find_batch(conn, stream, batch)
        if retried is not None:
            return retried
        raise WrongExpectedVersion(stream, expected, actual)
    if not batch:
        return nothing_appended(stream, actual)
    recorded_at = now_us()
    # Insert parameters; with the position in front they are also the
    # rows that inline projections receive.
    values = [
        (stream, actual + i, e.id, e.type, e.schema_version, e.data, e.metadata, recorded_at)
        for i, e in enumerate(batch, 1)
    ]
    try:
        if len(values) == 1:
            position = conn.execute(SQL["append"], values[0]).lastrowid or 0
        else:
            conn.executemany(SQL["append"], values)
            (position,) = conn.execute("SELECT last_insert_rowid()").fetchone()
    except sqlite3.IntegrityError:
        # The version was checked under the write lock, so this is an event id
        # that is already stored: either a retried batch or a reused id.
        retried = _find_batch(conn, stream, batch)
        if retried is not None:
            return retried
        raise
    # Positions are consecutive: this transaction holds the write lock.
    first = position - len(values) + 1
    if inline is not None:
        inline(conn, [(first + i, *value) for i, value in enumerate(values)])
    positions = (position,) if first == position else tuple(range(first, position + 1))
    return AppendResult(stream, actual + 1, actual + len(batch), position, positions)


def _find_batch(
    conn: sqlite3.Connection, stream: str, batch: list[EncodedEvent]
) -> AppendResult | None:
    found: dict[bytes, tuple[str, int, int]] = {}
    for e in batch:
        row = conn.execute(SQL["find_event_ids"], (e.id,)).fetchone()
        if row is not None:
            found[e.id] = row
    return idempotent_result(stream, batch, found)


def read_page(
    db: SqliteDatabase, stream: str, cursor: int, backwards: bool, count: int
) -> list[Row]:
    """Up to ``count`` rows of ``stream`` starting at version ``cursor``."""
    sql = SQL["read_backward"] if backwards else SQL["read_forward"]
    with db.handle() as conn:
        return conn.execute(sql, (stream, cursor, count)).fetchall()


def read_all_page(
    db: SqliteDatabase, after: int, types: list[str] | None, prefix: str | None, count: int
) -> list[Row]:
    """Up to ``count`` rows of the global log after ``after``."""
    with db.handle() as conn:
        if types is None and prefix is None:
            return conn.execute(SQL["read_all"], (after, count)).fetchall()
        types_json = json.dumps(types) if types is not None else None
        return conn.execute(SQL["read_all_filtered"], (after, types_json, prefix, count)).fetchall()


def head_and_page(
    db: SqliteDatabase, after: int, types: list[str] | None, prefix: str | None, count: int
) -> tuple[int, list[Row]]:
    """The log's last position, then up to ``count`` rows after ``after`` (one trip)."""
    return last_position(db), read_all_page(db, after, types, prefix, count)


def stream_info(
    db: SqliteDatabase, stream: str
) -> tuple[int, int | None, bytes | None, bytes | None, bytes | None]:
    """(version, first stored version, metadata, deletion, truncation) of ``stream``."""
    with db.handle() as conn:
        row: tuple[int, int | None, bytes | None, bytes | None, bytes | None]
        row = conn.execute(SQL["stream_info"], (stream,)).fetchone()
        return row


def find_event(db: SqliteDatabase, event_id: bytes) -> Row | None:
    """The row of the event ``event_id`` unless its stream is deleted."""
    with db.handle() as conn:
        row: Row | None = conn.execute(SQL["find_event"], (event_id,)).fetchone()
        return row


def _is_hard_deleted(conn: sqlite3.Connection, stream: str) -> bool:
    info = conn.execute(SQL["stream_info"], (stream,)).fetchone()
    return is_hard_deletion(info[3])


def _state(conn: sqlite3.Connection, stream: str) -> tuple[int, bytes | None]:
    version, _, _, deletion, _ = conn.execute(SQL["stream_info"], (stream,)).fetchone()
    return version, deletion


def delete_stream(db: SqliteDatabase, stream: str, hard: bool, by: str, reason: str) -> None:
    """Mark ``stream`` deleted; erase its events too when ``hard``."""
    with db.write("delete_stream") as conn:
        version = deletion_version(stream, *_state(conn, stream), hard)
        if version is None:
            return
        conn.execute(SQL["mark_deleted"], (stream, encode_deletion(by, reason, hard, version)))
        if hard:
            conn.execute(SQL["erase_stream"], (stream,))


def restore_stream(db: SqliteDatabase, stream: str) -> None:
    """Clear a soft delete."""
    with db.write("restore_stream") as conn:
        if restore_needed(stream, *_state(conn, stream)):
            conn.execute(SQL["restore_stream"], (stream,))


def truncate_stream(db: SqliteDatabase, stream: str, before: int, by: str, reason: str) -> int:
    """Erase events older than ``before`` (never the newest); return the count."""
    with db.write("truncate_stream") as conn:
        keep_from = truncation_point(stream, *_state(conn, stream), before)
        erased: int = conn.execute(SQL["erase_before"], (stream, keep_from)).rowcount
        if erased:
            record = encode_deletion(by, reason, True, keep_from)
            conn.execute(SQL["mark_truncated"], (stream, keep_from, record))
        return erased


def save_snapshot(
    db: SqliteDatabase, stream: str, version: int, state_type: str, schema_version: int, data: bytes
) -> None:
    """Insert or replace the snapshot of (stream, version)."""
    params = (stream, version, state_type, schema_version, data, now_us())
    with db.write("save_snapshot") as conn:
        conn.execute(SQL["save_snapshot"], params)


def load_snapshot(db: SqliteDatabase, stream: str, max_version: int) -> SnapshotRow | None:
    """(version, state_type, schema_version, data, recorded_at) of the newest match."""
    with db.handle() as conn:
        row: SnapshotRow | None = conn.execute(
            SQL["load_snapshot"], (stream, max_version)
        ).fetchone()
        return row


def list_snapshots(db: SqliteDatabase, stream: str) -> list[SnapshotRow]:
    """The rows of every snapshot of ``stream``, oldest first."""
    with db.handle() as conn:
        rows: list[SnapshotRow] = conn.execute(SQL["list_snapshots"], (stream,)).fetchall()
        return rows


def delete_snapshots(
    db: SqliteDatabase, stream: str | None, state_type: str | None, keep_schema_version: int | None
) -> int:
    """Delete matching snapshots; return how many."""
    params = (stream, state_type, keep_schema_version)
    with db.write("delete_snapshots") as conn:
        deleted: int = conn.execute(SQL["delete_snapshots"], params).rowcount
        return deleted


def set_stream_metadata(db: SqliteDatabase, stream: str, metadata: bytes | None) -> None:
    """Store the stream's metadata."""
    with db.write("set_stream_metadata") as conn:
        conn.execute(SQL["set_stream_metadata"], (stream, metadata))


def last_position(db: SqliteDatabase) -> int:
    """Highest committed position."""
    with db.handle() as conn:
        (position,) = conn.execute(SQL["last_position"]).fetchone()
        return int(position)


def append_in(
    db: SqliteDatabase,
    handle: Handle,
    stream: str,
    batch: list[EncodedEvent],
    expected: Expected,
    inline: InlineHook | None = None,
) -> AppendResult:
    """Append in the transaction of ``handle`` (visible once it commits)."""
    try:
        return _append_in_transaction(handle.conn, stream, batch, expected, inline)
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        db.translate.raise_for(exc)
        raise


def join(db: SqliteDatabase, conn: sqlite3.Connection) -> bool:
    """Check the application's connection, and begin a write transaction on it if none is open.

    Returns whether it began one (then :func:`leave` ends it). The connection
    must be to the store's own file; a transaction it has open is joined.
    """
    try:
        row = conn.execute(SQL["join_transaction"]).fetchone()
    except sqlite3.ProgrammingError as exc:
        raise InvalidRequest(
            f"the connection given to transaction() cannot be used here: {exc}"
        ) from exc
    except sqlite3.Error as exc:
        db.translate.raise_for(exc)
        raise
    file = row[0] if row else ""
    if db.memory or not file or not _same_file(file, db.path):
        raise InvalidRequest(
            f"the connection given to transaction() is to {file or 'an in-memory database'!r}, "
            f"not to the store's file {db.path!r}"
        )
    if conn.in_transaction:
        return False
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        db.translate.raise_for(exc)
        raise
    return True


def leave(db: SqliteDatabase, conn: sqlite3.Connection, *, commit: bool) -> None:
    """End the transaction :func:`join` began: COMMIT, or ROLLBACK."""
    try:
        if commit:
            conn.commit()
        else:
            conn.rollback()
    except sqlite3.Error as exc:
        db.translate.raise_for(exc)
        raise


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
