"""SQLite connections and transactions, shared by the sync and async SQLite stores.

sqlite3 has no asyncio API, so the I/O is written once, as plain blocking
code: this module opens, checks and migrates the file and hands out
connections and write transactions; the operations on events
(:mod:`._event_ops`) and checkpoints (:mod:`._checkpoint_ops`) are functions
over it. The sync store calls them directly, the async store runs them on
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

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from eventfold._checks import check_seconds
from eventfold.errors import (
    ConfigurationError,
    InvalidRequest,
    StoreError,
    StoreTimeout,
)
from eventfold.store._sql import load_statements
from eventfold.store.sqlite._conn import (
    APPLICATION_ID,
    SQLITE_HEADER,
    FileFacts,
    Handle,
    OwnedLock,
    inspect_file,
    is_busy,
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

__all__ = ["APPLICATION_ID", "SQL", "Durability", "Handle", "SqliteDatabase"]

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


class LocalCommits:
    """The commits to one SQLite file made by the stores of this process.

    SQLite tells no one of a commit: a follower polls. A commit made here
    wakes this process's pollers at once (other processes' commits are still
    found by the poll), so a runner beside its writer has no poll delay.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.count = 0  # commits so far (compare with a count seen earlier)

    def committed(self) -> None:
        with self._changed:
            self.count += 1
            self._changed.notify_all()

    def wait(self, seen: int, seconds: float) -> None:
        """Block up to ``seconds``, or until a commit after ``seen`` (a ``count``)."""
        with self._changed:
            self._changed.wait_for(lambda: self.count != seen, seconds)


_commits: weakref.WeakValueDictionary[tuple[int, int], LocalCommits]
_commits = weakref.WeakValueDictionary()
_commits_lock = threading.Lock()


def _local_commits(path: str) -> LocalCommits:
    """The commits of this process to the file at ``path`` (by its identity, not its name)."""
    facts = os.stat(path)
    key = (facts.st_dev, facts.st_ino)
    with _commits_lock:
        found = _commits.get(key)
        if found is None:
            found = _commits[key] = LocalCommits()
        return found


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
        self._handles: list[Handle] = []
        self._handles_lock = threading.Lock()
        self._shared: Handle | None = None
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
        #: Commits to this file in this process (news for the pollers): the
        #: file's own once it exists (the stores of one file share it).
        self.commits = LocalCommits()
        try:
            self._open()
            if not self.memory:
                self.commits = _local_commits(self.path)
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
                with self.write("marking the file as eventfold's") as conn:
                    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            return
        for target in range(facts.user_version + 1, SCHEMA_VERSION + 1):
            with self.write("a migration") as conn:
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

    def _register(self, conn: sqlite3.Connection) -> Handle:
        shared = self.memory
        handle = Handle(self, conn, None if shared else threading.current_thread())
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

    def handle(self) -> Handle:
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
        handle = self.handle()
        if handle.closed or self._closed:
            if handle.take(0):
                handle.leave()  # closes it, if this thread is the last to use it
            raise closed_error(self.path)
        if handle.sqlite_busy_ms != self.busy_ms:
            handle.enter()  # SQLite's busy timeout for reads, set again after a write
            handle.leave()
        handle.pins.add(threading.current_thread())
        return handle.conn

    def connection_timeout(self, handle: Handle) -> StoreTimeout:
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
        handle = self.handle()
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
        return self.write("a write transaction", body_is_ours=False)

    @contextmanager
    def write(self, operation: str, *, body_is_ours: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        handle = self.begin_write(operation)
        try:
            yield handle.conn
        except BaseException as exc:
            self.end_write(handle, commit=False)
            # The driver's UnicodeDecodeError is translated; the caller's own is not.
            if body_is_ours or not isinstance(exc, UnicodeDecodeError):
                self.translate.raise_for(exc)
            raise
        self.end_write(handle, commit=True)

    # A transaction a caller drives step by step (store.transaction()): begun,
    # used and ended on one thread (the async store's transaction thread).

    def execute_in(self, handle: Handle, sql: str, params: Sequence[Any]) -> sqlite3.Cursor:
        """Run ``sql`` in the transaction of ``handle`` (errors translated)."""
        try:
            return handle.conn.execute(sql, params)
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            self.translate.raise_for(exc)
            raise

    def begin_write(self, operation: str = "a transaction", handle: Handle | None = None) -> Handle:
        """Take this thread's connection (or ``handle``) and the write lock, and BEGIN IMMEDIATE.

        ``handle``: another thread's connection, idle while this one uses it
        (an async transaction begun by the task that reaches for its connection).
        """
        if self.read_only:
            raise InvalidRequest(
                f"SQLite store {self.path!r} was opened with read_only=True: "
                f"{operation} is refused (nothing was written)"
            )
        if handle is None:
            handle = self.handle()
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

    def _give_turn(self, handle: Handle) -> float:
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

    def _data_version(self, handle: Handle) -> int:
        """SQLite's count of other connections' commits, as this connection sees it."""
        conn = handle.enter(reading=False)
        try:
            with self.translate:
                (version,) = conn.execute("PRAGMA data_version").fetchone()
        finally:
            handle.leave()
        return int(version)

    def end_write(self, handle: Handle, commit: bool) -> None:
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
                self.commits.committed()
            else:
                self._rollback(conn)
        finally:
            self._release_write(handle)

    def _release_write(self, handle: Handle) -> None:
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

    def _begin(self, handle: Handle, waited: float, polite_until: float = 0.0) -> None:
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
            if not is_busy(exc):
                raise
            busy = exc
        self._wait_to_begin(handle, waited, polite_until, busy)

    def _wait_to_begin(
        self, handle: Handle, waited: float, polite_until: float, busy: sqlite3.Error
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
                if not is_busy(exc):
                    raise
                busy = exc

    def _rollback(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            # Closed or interrupted: SQLite has rolled the transaction back itself.
            logger.debug("rollback on %r failed: %s", self.path, exc)
