"""SQLite transaction bodies, shared by the sync and async SQLite stores.

sqlite3 has no asyncio API, so the I/O is written once here as plain
functions: the sync store calls them directly, the async store runs them on
worker threads. Every sqlite3 exception (and the driver's UnicodeDecodeError)
is translated at one boundary, :mod:`eventfold.store.sqlite._errors`.

Concurrency: each thread gets its own connection to a file (``:memory:``
has one connection, shared: see below). Appends run in ``BEGIN IMMEDIATE``
transactions, which take SQLite's single write lock before reading the
stream version, so the expected-version check and the insert are one atomic
step, across threads and across processes sharing the file. Threads of one
store first queue on a Python lock, which hands the write lock over at once;
for other connections' locks (other store objects, other processes) a writer
tries BEGIN IMMEDIATE again every few hundred microseconds, not through
SQLite's busy handler, whose sleeps grow to 100 ms and would almost never
catch a busy holder between two transactions. Both waits together are
bounded by ``busy_timeout``, after which the writer gets StoreTimeout naming
who holds the lock. A connection whose write transaction held the lock for
long (a projection's batch) gives the others a turn before it writes again.
Reads keep SQLite's busy handler for their rare SQLITE_BUSY (another
process recovering the file), with ``busy_timeout``.

Each use of a connection holds that connection's lock, so that ``close()``
from another thread never closes a connection under a running statement (the
sqlite3 module frees the statement and the process crashes): ``close()``
interrupts running reads (they raise StoreClosed), lets running write
transactions finish (waiting up to ``busy_timeout``), and closes each
connection when its use ends.

An in-memory database exists only inside its connection: ``":memory:"``
stores keep one connection that the threads take turns on (reads wait for
a write transaction to end, up to ``busy_timeout``).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

from eventfold._checks import check_seconds
from eventfold._clock import now_us
from eventfold.errors import (
    ConfigurationError,
    InvalidRequest,
    StoreError,
    StoreTimeout,
    StreamDeleted,
    WrongExpectedVersion,
)
from eventfold.store._rows import EncodedEvent, InlineHook, Row, SnapshotRow
from eventfold.store._rules import (
    decode_deletion,
    deletion_version,
    encode_deletion,
    expectation_met,
    idempotent_result,
    restore_needed,
    truncation_point,
)
from eventfold.store._sql import load_statements
from eventfold.store._types import AppendResult, Expected
from eventfold.store.sqlite._conn import (
    APPLICATION_ID,
    SQLITE_HEADER,
    FileFacts,
    OwnedLock,
    inspect_file,
    read_facts,
)
from eventfold.store.sqlite._errors import (
    Translate,
    closed_error,
    missing_directory_error,
    not_a_database_error,
    on_read_only_file_system,
    read_only_error,
    write_obstacle,
)

__all__ = ["APPLICATION_ID", "Durability", "SqliteDatabase"]

SQL = load_statements("sqlite")
SCHEMA_VERSION = 4

logger = logging.getLogger("eventfold.store.sqlite")

#: ``full``: an acknowledged append survives power loss (fsync per commit).
#: ``normal``: survives a crash of the process; the last commits may be lost
#: on power loss or OS crash. ``off``: no fsync at all (tests, bulk loads).
Durability = Literal["full", "normal", "off"]
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}
#: While another connection (another store object, another process) holds
#: SQLite's write lock, a writer tries BEGIN IMMEDIATE again after this pause,
#: doubling up to _BUSY_PAUSE_MAX: SQLite's own busy handler sleeps up to
#: 100 ms between tries and so almost never finds the lock free between two
#: transactions of a busy holder.
_BUSY_PAUSE_MIN = 0.0001
_BUSY_PAUSE_MAX = 0.0005
#: A write transaction that held the lock this long (a projection's batch, a
#: large append) gives other writers a turn: the same connection writes again
#: _TURN_QUIET after it at the earliest, so that writers waiting elsewhere,
#: which try every _BUSY_PAUSE_MAX at the latest, find the lock free instead of
#: taken again at once. SQLite tells a holder nothing about waiters, hence a
#: turn after every long transaction (about 2% of a catch-up's time).
_LONG_HOLD = 0.02
_TURN_QUIET = 0.001
#: Once another connection wrote during a turn, turns last _TURN for
#: _CONTENDED_FOR seconds, and go on while others write, up to _TURN_MAX.
_TURN = 0.002
_TURN_MAX = 0.01
_CONTENDED_FOR = 1.0


def _is_busy(exc: sqlite3.Error) -> bool:
    """Whether SQLite said SQLITE_BUSY: another connection holds the lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_BUSY


class _Handle:
    """One sqlite3 connection and the lock held by each use of it.

    ``enter()``/``leave()`` (or ``with handle as conn``, which also
    translates errors) bracket every use. ``pins``: threads that took the
    bare connection (:meth:`SqliteDatabase.connection`) and may use it
    without the lock; only they close it.
    """

    __slots__ = (
        "_db",
        "closed",
        "conn",
        "contended_until",
        "data_version",
        "depth",
        "guard",
        "held",
        "lock",
        "pins",
        "released_at",
        "sqlite_busy_ms",
        "thread",
        "write_began",
        "writing",
    )

    def __init__(
        self, db: SqliteDatabase, conn: sqlite3.Connection, thread: threading.Thread | None
    ) -> None:
        self._db = db
        self.conn = conn
        self.thread = thread  # None: shared by every thread (":memory:")
        self.lock = threading.RLock()
        self.depth = 0  # how deep the holder of `lock` is inside uses
        self.held: tuple[threading.Thread, float] | None = None  # shared: who, since when
        self.guard = threading.Lock()  # orders close() against interrupt()
        self.closed = False
        self.writing = False
        self.pins: set[threading.Thread] = set()
        # SQLite's busy timeout on `conn` now: reads keep busy_timeout (SQLite's
        # handler covers their rare SQLITE_BUSY, e.g. during another process's
        # recovery); BEGIN IMMEDIATE sets 0 and waits in eventfold's own loop.
        self.sqlite_busy_ms = db.busy_ms
        self.write_began = 0.0  # monotonic: when the write lock was taken
        self.released_at = 0.0  # monotonic: when a long write transaction released it
        self.data_version = 0  # PRAGMA data_version when it released it
        self.contended_until = 0.0  # monotonic: other connections wrote lately

    def take(self, timeout: float | None) -> bool:
        """Take the lock within ``timeout`` seconds (0: if free, None: wait)."""
        lock = self.lock
        if not lock.acquire(False):
            if timeout is None:
                lock.acquire()
            elif timeout <= 0 or not lock.acquire(True, timeout):
                return False
        self.depth += 1
        if self.depth == 1 and self.thread is None:
            self.held = (threading.current_thread(), time.monotonic())
        return True

    def holder_text(self) -> str:
        """Who uses the connection now, for messages."""
        held = self.held
        if held is not None:
            return f"thread {held[0].name!r} has used it for {time.monotonic() - held[1]:.1f} s"
        if self.thread is not None:
            return f"thread {self.thread.name!r} is using it"
        return "no thread uses it any more"

    def enter(self, *, reading: bool = True) -> sqlite3.Connection:
        """Begin a use (``reading``: SQLite's busy timeout is busy_timeout)."""
        db = self._db
        # A thread's own connection is contended only by close(), which holds
        # its lock for a moment; the shared one by every thread of the store.
        if not self.take(db.busy_timeout if self.thread is None else None):
            raise db.connection_timeout(self)
        if self.closed or (db.closed and self.depth == 1):
            self.leave()
            raise closed_error(db.path)
        if reading and self.sqlite_busy_ms != db.busy_ms:
            try:
                self.set_sqlite_busy(db.busy_ms)
            except BaseException:
                self.leave()
                raise
        return self.conn

    def set_sqlite_busy(self, ms: int) -> None:
        """Set SQLite's busy timeout of the connection (between uses of it: rarely)."""
        try:
            self.conn.execute(f"PRAGMA busy_timeout={ms}")
        except sqlite3.Error as exc:
            self._db.translate.raise_for(exc)
            raise
        self.sqlite_busy_ms = ms

    def leave(self) -> None:
        """End a use; the last use after close() closes the connection."""
        if self.depth == 1:
            self.held = None
            if self._db.closed:
                self.close_if_safe()
        self.depth -= 1
        self.lock.release()

    def __enter__(self) -> sqlite3.Connection:
        return self.enter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.leave()
        if exc is not None:
            self._db.translate.raise_for(exc)

    def close_if_safe(self) -> None:
        """Close the connection unless a live thread other than this one pinned it."""
        me = threading.current_thread()
        if all(t is me or not t.is_alive() for t in self.pins):
            with self.guard:
                if not self.closed:
                    self.closed = True
                    self.conn.close()

    def interrupt(self) -> None:
        """Make the running statement fail (SQLITE_INTERRUPT) soon; safe from any thread."""
        with self.guard:
            if not self.closed:
                self.conn.interrupt()


class SqliteDatabase:
    """Connections to one SQLite file and the store's transactions on it."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability,
        busy_timeout: float,
        read_only: bool = False,
    ) -> None:
        if durability not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"durability must be one of {sorted(_SYNCHRONOUS)}, not {durability!r}"
            )
        check_seconds("busy_timeout", busy_timeout, allow_zero=True, error=ConfigurationError)
        if not isinstance(read_only, bool):
            raise ConfigurationError(f"read_only must be True or False, not {read_only!r}")
        self.path = os.fspath(path)
        self.memory = self.path == ":memory:"
        if self.memory and read_only:
            raise ConfigurationError(
                "an in-memory SQLite database cannot be read_only: it starts empty"
            )
        self.durability = durability
        self.busy_timeout = float(busy_timeout)
        self.busy_ms = int(self.busy_timeout * 1000)
        self.read_only = read_only
        self._local = threading.local()
        # Every connection opened (file: one per thread; memory: one shared).
        self._handles: list[_Handle] = []
        self._handles_lock = threading.Lock()
        self._shared: _Handle | None = None
        self._write_lock = OwnedLock()
        self._closed = False
        self.translate = Translate(
            self.path,
            read_only=read_only,
            busy_timeout=self.busy_timeout,
            is_closed=self._is_closed,
        )
        self._target = self.path
        self._uri = False
        if read_only:
            self._target = f"file:{quote(str(Path(self.path).absolute()))}?mode=ro"
            self._uri = True
        try:
            self._open()
        except BaseException:
            self.close()  # no connection outlives a failed open
            raise

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _is_closed(self) -> bool:
        return self._closed

    # -- opening ------------------------------------------------------------------------

    def _open(self) -> None:
        if not self.memory:
            self._check_path()
        conn, facts = self._first_connection()
        handle = self._register(conn)
        with handle as conn:
            inspect_file(facts, self.path)
            if facts.user_version > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"{self.path!r} has eventfold schema version {facts.user_version}; this "
                    f"eventfold knows up to {SCHEMA_VERSION}: upgrade eventfold"
                )
            if self.read_only:
                self._check_readable(facts)
                return
            self._configure(conn)
        self._migrate(facts)

    def _check_path(self) -> None:
        """What the file system can tell before SQLite opens (or creates) the file."""
        file = Path(self.path)
        if file.is_dir():
            raise ConfigurationError(f"SQLite path {self.path!r} is a directory, not a file")
        directory = file.absolute().parent
        if not directory.is_dir():
            raise missing_directory_error(self.path, directory)
        if self.read_only and not file.exists():
            raise ConfigurationError(
                f"SQLite database {self.path!r} does not exist "
                "(read_only=True opens existing files only)"
            )
        header = b""
        if file.exists():
            try:
                with file.open("rb") as stream:
                    header = stream.read(len(SQLITE_HEADER))
            except OSError as exc:
                message = f"cannot read SQLite database {self.path!r}: {exc.strerror}"
                raise StoreError(message) from exc
        if header and header != SQLITE_HEADER:
            raise not_a_database_error(self.path, "it does not begin with SQLite's file header")
        if not self.read_only:
            why = write_obstacle(file.absolute())
            if why is not None:
                raise read_only_error(self.path, why)

    def _first_connection(self) -> tuple[sqlite3.Connection, FileFacts]:
        """Connect and read what the file is, before changing anything in it."""
        with self.translate:
            try:
                return self._connect_and_read()
            except sqlite3.OperationalError as exc:
                if not (exc.sqlite_errorcode == sqlite3.SQLITE_CANTOPEN and self._immutable_ok()):
                    raise
            # A WAL file without its -wal on read-only media: SQLite cannot
            # create the -shm it wants, but nobody can write the file there
            # either, so it is read as immutable (no locks, no -shm).
            logger.info("opening %r as immutable: read-only media, no -wal file", self.path)
            self._target += "&immutable=1"
            return self._connect_and_read()

    def _connect_and_read(self) -> tuple[sqlite3.Connection, FileFacts]:
        conn = self._raw_connect()
        try:
            return conn, read_facts(conn, SQL["schema_objects"])
        except BaseException:
            conn.close()
            raise

    def _immutable_ok(self) -> bool:
        file = Path(self.path).absolute()
        return (
            self.read_only
            and file.is_file()
            and not file.with_name(file.name + "-wal").exists()
            and on_read_only_file_system(file)
        )

    def _check_readable(self, facts: FileFacts) -> None:
        if facts.is_new:
            raise ConfigurationError(
                f"{self.path!r} is empty, not an eventfold database yet "
                "(read_only=True never initialises a file)"
            )
        if facts.user_version < SCHEMA_VERSION:
            raise ConfigurationError(
                f"{self.path!r} is at eventfold schema version {facts.user_version}; this "
                f"eventfold reads version {SCHEMA_VERSION}: open it once without "
                "read_only=True to migrate it, or read it with the eventfold that wrote it"
            )

    def _migrate(self, facts: FileFacts) -> None:
        if facts.user_version == SCHEMA_VERSION:
            if facts.application_id != APPLICATION_ID:
                # Made by an eventfold that did not mark its files yet.
                with self._write("marking the file as eventfold's") as conn:
                    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            return
        for target in range(facts.user_version + 1, SCHEMA_VERSION + 1):
            with self._write("a migration") as conn:
                # Re-check under the write lock: another process may have migrated.
                (current,) = conn.execute("PRAGMA user_version").fetchone()
                if current >= target:
                    continue
                for statement in SQL[f"migration_{target}"].split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={target}")
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")

    # -- connections --------------------------------------------------------------------

    def _raw_connect(self) -> sqlite3.Connection:
        return sqlite3.connect(
            self._target,
            uri=self._uri,
            timeout=self.busy_timeout,
            isolation_level=None,  # explicit BEGIN/COMMIT only
            check_same_thread=False,  # close() may run on another thread
            cached_statements=64,
        )

    def _configure(self, conn: sqlite3.Connection) -> None:
        if not self.read_only:  # a read-only file keeps the journal mode it has
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS[self.durability]}")

    def _register(self, conn: sqlite3.Connection) -> _Handle:
        shared = self.memory
        handle = _Handle(self, conn, None if shared else threading.current_thread())
        with self._handles_lock:
            if self._closed:
                conn.close()
                raise closed_error(self.path)
            finished = [
                h for h in self._handles if h.thread is not None and not h.thread.is_alive()
            ]
            self._handles = [h for h in self._handles if h not in finished]
            self._handles.append(handle)
        for stale in finished:
            stale.close_if_safe()
        if shared:
            self._shared = handle
        else:
            self._local.handle = handle
        return handle

    def _handle(self) -> _Handle:
        """This thread's connection (opened on first use), or the shared one."""
        handle = self._shared
        if handle is not None:
            return handle
        handle = getattr(self._local, "handle", None)
        if handle is None:
            if self._closed:
                raise closed_error(self.path)
            with self.translate:
                conn = self._raw_connect()
                try:
                    self._configure(conn)
                except BaseException:
                    conn.close()
                    raise
            handle = self._register(conn)
        return handle

    def connection(self) -> sqlite3.Connection:
        """This thread's bare connection, opened on first use.

        Prefer :meth:`reading` and :meth:`write_transaction`: they translate
        errors and keep ``close()`` from closing the connection under them.
        A connection taken here is closed by the thread that took it, at its
        next use through the store after ``close()`` (or when it ends).
        """
        handle = self._handle()
        if handle.closed or self._closed:
            if handle.take(0):
                handle.leave()  # closes it, if this thread is the last to use it
            raise closed_error(self.path)
        if handle.sqlite_busy_ms != self.busy_ms:
            handle.enter()  # SQLite's busy timeout for reads, set again after a write
            handle.leave()
        handle.pins.add(threading.current_thread())
        return handle.conn

    def connection_timeout(self, handle: _Handle) -> StoreTimeout:
        """The error of a wait for a connection held by another thread (``:memory:``)."""
        message = (
            f"SQLite database {self.path!r}: waited {self.busy_timeout:g} s (busy_timeout) "
            f"for its connection; {handle.holder_text()} (an in-memory database "
            "has one connection, used by one thread at a time); retry, or raise busy_timeout"
        )
        logger.warning("%s", message)
        return StoreTimeout(message)

    def write_lock_holder(self) -> tuple[str, float] | None:
        """Who holds this store's write lock: (thread name, since), or None.

        ``since`` is a ``time.monotonic()`` value: ``time.monotonic() - since``
        is how long the thread has held it (a projection handler in its batch
        transaction, an append). Only threads of this process are seen; other
        processes hold SQLite's lock directly.
        """
        return self._write_lock.holder()

    def close(self) -> None:
        """Close every connection; interrupt running reads, let running writes end.

        Waits up to ``busy_timeout`` for uses that are running; a connection
        still in use then is closed when that use ends (a warning says so).
        """
        with self._handles_lock:
            if self._closed:
                return
            self._closed = True
            handles, self._handles = self._handles, []
        busy = []
        for handle in handles:
            # Taken here, a handle is closed by leave() (or, taken deeper by
            # this very thread, when this thread leaves it).
            if handle.take(0):
                handle.leave()
            else:
                if not handle.writing:
                    handle.interrupt()
                busy.append(handle)
        deadline = time.monotonic() + self.busy_timeout
        for handle in busy:
            if handle.take(max(deadline - time.monotonic(), 0)):
                handle.leave()
            else:
                logger.warning(
                    "closing SQLite store %r: a connection is still in use (%s); "
                    "it is closed when that use ends",
                    self.path,
                    handle.holder_text(),
                )

    # -- transactions -------------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection for reads outside a transaction (errors translated)."""
        handle = self._handle()
        conn = handle.enter()
        try:
            yield conn
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            self.translate.raise_for(exc)
            raise
        finally:
            handle.leave()

    def write_transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """This thread's connection inside a write transaction (errors translated).

        For read models kept in the same file as the events: what is written
        through the connection commits or rolls back together.
        """
        return self._write("a write transaction", body_is_ours=False)

    @contextmanager
    def _write(self, operation: str, *, body_is_ours: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        handle = self._begin_write(operation)
        try:
            yield handle.conn
        except BaseException as exc:
            self._end_write(handle, commit=False)
            # The driver's UnicodeDecodeError is translated; the caller's own is not.
            if body_is_ours or not isinstance(exc, UnicodeDecodeError):
                self.translate.raise_for(exc)
            raise
        self._end_write(handle, commit=True)

    # A transaction a caller drives step by step (store.transaction()): begun,
    # used and ended on one thread (the async store's transaction thread).

    def begin_write(self, operation: str = "a transaction") -> _Handle:
        """BEGIN IMMEDIATE on this thread's connection, under the write lock."""
        return self._begin_write(operation)

    def end_write(self, handle: _Handle, commit: bool) -> None:
        """COMMIT (or ROLLBACK) what :meth:`begin_write` began, releasing the lock."""
        self._end_write(handle, commit=commit)

    def execute_in(self, handle: _Handle, sql: str, params: Sequence[Any]) -> sqlite3.Cursor:
        """Run ``sql`` in the transaction of ``handle`` (errors translated)."""
        try:
            return handle.conn.execute(sql, params)
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            self.translate.raise_for(exc)
            raise

    def append_in(
        self,
        handle: _Handle,
        stream: str,
        batch: list[EncodedEvent],
        expected: Expected,
        inline: InlineHook | None = None,
    ) -> AppendResult:
        """Append in the transaction of ``handle`` (visible once it commits)."""
        try:
            return self._append_in_transaction(handle.conn, stream, batch, expected, inline)
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            self.translate.raise_for(exc)
            raise

    def _begin_write(self, operation: str) -> _Handle:
        """Take this thread's connection and the write lock, and BEGIN IMMEDIATE."""
        if self.read_only:
            raise InvalidRequest(
                f"SQLite store {self.path!r} was opened with read_only=True: "
                f"{operation} is refused (nothing was written)"
            )
        handle = self._handle()
        polite_until = self._give_turn(handle) if handle.released_at else 0.0
        handle.enter(reading=False)
        try:
            waited = self._take_write_lock()
        except BaseException:
            handle.leave()
            raise
        handle.writing = True
        try:
            with self.translate:
                self._begin(handle, waited, polite_until)
        except BaseException:
            self._release_write(handle)
            raise
        handle.write_began = time.monotonic()
        return handle

    def _give_turn(self, handle: _Handle) -> float:
        """After a long write transaction of this connection: let waiting writers in.

        Its next write starts a turn after the long one ended at the earliest
        (time spent on other work, such as reading a projection's next page,
        counts), so that writers waiting in this process (on the write lock)
        and elsewhere (trying BEGIN IMMEDIATE every _BUSY_PAUSE_MAX) find the
        lock free and write in between. While other connections write during
        the turns, the turn goes on, up to _TURN_MAX. Returns when that is
        (monotonic): until then, a BEGIN IMMEDIATE that finds the lock taken
        (another writer is in its turn) lets other waiters go first.
        """
        released, handle.released_at = handle.released_at, 0.0
        contended = time.monotonic() < handle.contended_until
        ends = released + (_TURN if contended else _TURN_QUIET)
        last = released + _TURN_MAX
        seen = handle.data_version
        while True:
            pause = ends - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # the turn of other writers, not synchronisation
            version = self._data_version(handle)
            if version == seen:
                return last  # nobody wrote since
            seen = version
            now = time.monotonic()
            handle.contended_until = now + _CONTENDED_FOR
            if now >= last:
                return last
            ends = min(max(ends, now) + _TURN, last)

    def _data_version(self, handle: _Handle) -> int:
        """SQLite's count of other connections' commits, as this connection sees it."""
        conn = handle.enter(reading=False)
        try:
            with self.translate:
                (version,) = conn.execute("PRAGMA data_version").fetchone()
        finally:
            handle.leave()
        return int(version)

    def _end_write(self, handle: _Handle, *, commit: bool) -> None:
        """COMMIT (or ROLLBACK), then release the write lock and the connection."""
        conn = handle.conn
        try:
            if commit:
                try:
                    with self.translate:
                        conn.execute("COMMIT")
                except BaseException:
                    self._rollback(conn)
                    raise
            else:
                self._rollback(conn)
        finally:
            self._release_write(handle)

    def _release_write(self, handle: _Handle) -> None:
        began, handle.write_began = handle.write_began, 0.0
        if began and handle.thread is not None:
            now = time.monotonic()
            if now - began >= _LONG_HOLD:
                # A long transaction ended: the next write of this connection
                # gives others a turn first (see _give_turn).
                try:
                    (handle.data_version,) = handle.conn.execute("PRAGMA data_version").fetchone()
                    handle.released_at = now
                except sqlite3.Error as exc:  # closed or interrupted: no turn to give
                    logger.debug("data_version on %r failed: %s", self.path, exc)
        handle.writing = False
        self._write_lock.release()
        handle.leave()

    def _take_write_lock(self) -> float:
        """Wait (at most busy_timeout) for this process's write lock; return seconds waited."""
        lock = self._write_lock
        if lock.held_by_me():
            raise StoreError(
                f"this thread already holds the write transaction of {self.path!r}: a write "
                "inside it (such as an append from a projection handler or an inline "
                "projection) would wait for itself; write through the transaction's "
                "connection instead"
            )
        if lock.acquire(0):
            return 0.0
        start = time.monotonic()
        if lock.acquire(self.busy_timeout):
            return time.monotonic() - start
        message = (
            f"SQLite database {self.path!r}: waited {time.monotonic() - start:.1f} s "
            f"(busy_timeout) for the write lock; {lock.holder_text()} in this process "
            "(a long write transaction, such as a slow projection handler); "
            "retry, or raise busy_timeout"
        )
        logger.warning("%s", message)
        raise StoreTimeout(message)

    def _begin(self, handle: _Handle, waited: float, polite_until: float = 0.0) -> None:
        """BEGIN IMMEDIATE, waiting for other connections' write lock in short steps.

        SQLite's busy handler would sleep up to 100 ms between tries: against a
        holder that commits and begins again soon (a projection catching up),
        it would almost never find the lock free. Other connections' locks get
        what is left of busy_timeout after ``waited`` (in this process). Until
        ``polite_until`` (the end of the turn this connection gives, after a
        long transaction) it tries only every _TURN: other writers go first.
        """
        conn = handle.conn
        if self.memory:  # one connection: nobody else can hold SQLite's lock
            conn.execute("BEGIN IMMEDIATE")
            return
        if handle.sqlite_busy_ms:
            handle.set_sqlite_busy(0)
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            busy = exc
        self._wait_to_begin(handle, waited, polite_until, busy)

    def _wait_to_begin(
        self, handle: _Handle, waited: float, polite_until: float, busy: sqlite3.Error
    ) -> None:
        """After BEGIN IMMEDIATE found the lock taken (``busy``): try again in short
        steps until it succeeds, or raise SQLite's busy error after busy_timeout."""
        conn = handle.conn
        deadline = time.monotonic() + max(self.busy_timeout - waited, 0.0)
        pause = _BUSY_PAUSE_MIN
        while True:
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                logger.warning(
                    "SQLite database %r: waited %.1f s (busy_timeout) for the write lock, "
                    "held by another connection (another store object or process)",
                    self.path,
                    self.busy_timeout,
                )
                raise busy
            if now < polite_until:
                # Another writer got the lock in this connection's turn: the file
                # is contended, and the writers waiting go first.
                handle.contended_until = now + _CONTENDED_FOR
                time.sleep(min(_TURN, remaining))
            else:
                time.sleep(min(pause, remaining))  # SQLite wakes no waiter: try again soon
                pause = min(pause * 2, _BUSY_PAUSE_MAX)
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                busy = exc

    def _rollback(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            # Closed or interrupted: SQLite has rolled the transaction back itself.
            logger.debug("rollback on %r failed: %s", self.path, exc)

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
        # Written out rather than with _write: this is the hot path.
        handle = self._begin_write("append")
        try:
            result = self._append_in_transaction(handle.conn, stream, batch, expected, inline)
        except BaseException as exc:
            self._end_write(handle, commit=False)
            self.translate.raise_for(exc)
            raise
        self._end_write(handle, commit=True)
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
            return AppendResult(stream, actual + 1, actual, 0, ())
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
            retried = self._find_batch(conn, stream, batch)
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
        self, conn: sqlite3.Connection, stream: str, batch: list[EncodedEvent]
    ) -> AppendResult | None:
        found: dict[bytes, tuple[str, int, int]] = {}
        for e in batch:
            row = conn.execute(SQL["find_event_ids"], (e.id,)).fetchone()
            if row is not None:
                found[e.id] = row
        return idempotent_result(stream, batch, found)

    def read_page(self, stream: str, cursor: int, backwards: bool, count: int) -> list[Row]:
        """Up to ``count`` rows of ``stream`` starting at version ``cursor``."""
        sql = SQL["read_backward"] if backwards else SQL["read_forward"]
        with self._handle() as conn:
            return conn.execute(sql, (stream, cursor, count)).fetchall()

    def read_all_page(
        self, after: int, types: list[str] | None, prefix: str | None, count: int
    ) -> list[Row]:
        """Up to ``count`` rows of the global log after ``after``."""
        with self._handle() as conn:
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
        with self._handle() as conn:
            row: tuple[int, int | None, bytes | None, bytes | None, bytes | None]
            row = conn.execute(SQL["stream_info"], (stream,)).fetchone()
            return row

    def find_event(self, event_id: bytes) -> Row | None:
        """The row of the event ``event_id`` unless its stream is deleted."""
        with self._handle() as conn:
            row: Row | None = conn.execute(SQL["find_event"], (event_id,)).fetchone()
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
        with self._write("delete_stream") as conn:
            version = deletion_version(stream, *self._state(conn, stream), hard)
            if version is None:
                return
            conn.execute(SQL["mark_deleted"], (stream, encode_deletion(by, reason, hard, version)))
            if hard:
                conn.execute(SQL["erase_stream"], (stream,))

    def restore_stream(self, stream: str) -> None:
        """Clear a soft delete."""
        with self._write("restore_stream") as conn:
            if restore_needed(stream, *self._state(conn, stream)):
                conn.execute(SQL["restore_stream"], (stream,))

    def truncate_stream(self, stream: str, before: int, by: str, reason: str) -> int:
        """Erase events older than ``before`` (never the newest); return the count."""
        with self._write("truncate_stream") as conn:
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
        with self._write("save_snapshot") as conn:
            conn.execute(SQL["save_snapshot"], params)

    def load_snapshot(self, stream: str, max_version: int) -> SnapshotRow | None:
        """(version, state_type, schema_version, data, recorded_at) of the newest match."""
        with self._handle() as conn:
            row: SnapshotRow | None = conn.execute(
                SQL["load_snapshot"], (stream, max_version)
            ).fetchone()
            return row

    def list_snapshots(self, stream: str) -> list[SnapshotRow]:
        """The rows of every snapshot of ``stream``, oldest first."""
        with self._handle() as conn:
            rows: list[SnapshotRow] = conn.execute(SQL["list_snapshots"], (stream,)).fetchall()
            return rows

    def delete_snapshots(
        self, stream: str | None, state_type: str | None, keep_schema_version: int | None
    ) -> int:
        """Delete matching snapshots; return how many."""
        params = (stream, state_type, keep_schema_version)
        with self._write("delete_snapshots") as conn:
            deleted: int = conn.execute(SQL["delete_snapshots"], params).rowcount
            return deleted

    def set_stream_metadata(self, stream: str, metadata: bytes | None) -> None:
        """Store the stream's metadata."""
        with self._write("set_stream_metadata") as conn:
            conn.execute(SQL["set_stream_metadata"], (stream, metadata))

    def last_position(self) -> int:
        """Highest committed position."""
        with self._handle() as conn:
            (position,) = conn.execute(SQL["last_position"]).fetchone()
            return int(position)
