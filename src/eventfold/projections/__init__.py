"""Projections (read models) fed by the global log, with checkpoints and error policies.

A projection is declared as data: a name, the event types it handles, a
handler, optional setup/teardown. A :class:`ProjectionRunner` feeds it from
``read_all``: it catches up in batches, then waits for new events (LISTEN on
PostgreSQL, a cheap change counter on SQLite, a condition in memory).

Delivery and effects:

* A projection writing to the event store's own database (the default on
  SQLite and PostgreSQL) gets the driver connection in ``ctx.connection``: its
  writes and the checkpoint advance commit in **one transaction** per batch,
  so a crash at any point neither loses nor doubles an effect.
* ``in_memory=True``: the read model lives in the process; it is rebuilt from
  position 0 when the process starts, and the checkpoint is kept in memory.
* :func:`attach_inline` runs a projection inside every append's transaction
  instead, for read-your-writes consistency.
* ``external=True`` for effects elsewhere (commands to other streams, mail,
  HTTP): each event is delivered **at least once**, the checkpoint advancing
  after the handler returns; process managers use this with idempotent
  commands.

Only one runner per projection name works at a time: runners take a lease
(fenced: a runner that lost it cannot move the checkpoint), and another
process takes over when the holder stops renewing it.

The runner is synchronous; asyncio applications run it in a thread
(``asyncio.to_thread(runner.run, stop)``) like any background worker.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from eventfold.errors import (
    ConfigurationError,
    EventfoldError,
    InvalidRequest,
    SerializationError,
    StoreError,
)
from eventfold.events import RecordedEvent
from eventfold.serialization import EMPTY_METADATA
from eventfold.store import EventStore
from eventfold.store._base import StoreBase
from eventfold.store._checkpoints import DeadLetter, ProjectionBackend, backend_for
from eventfold.store._rows import (
    Row,
    Undecodable,
    decode_row,
    decode_rows,
    decode_rows_lenient,
    row_matches,
)
from eventfold.store._rules import check_bool, check_non_negative, check_seconds, us_to_datetime

__all__ = [
    "DeadLetter",
    "ErrorPolicy",
    "LeaseHeld",
    "LeaseLost",
    "Progress",
    "Projection",
    "ProjectionContext",
    "ProjectionRunner",
    "ProjectionStatus",
    "ProjectionStopped",
    "active_projection",
    "attach_inline",
    "projection_statuses",
    "switch_projection",
]

logger = logging.getLogger("eventfold.projections")


class ProjectionStopped(EventfoldError):
    """A projection's handler failed on an event and its policy says stop."""

    def __init__(self, name: str, event: RecordedEvent, error: BaseException) -> None:
        self.name = name
        self.event = event
        self.error = error
        super().__init__(
            f"projection {name!r} stopped at position {event.position} "
            f"({event.type} in {event.stream!r} v{event.version}): {error!r}"
        )


class LeaseLost(EventfoldError):
    """Another runner took over this projection; this one must stop writing."""


class LeaseHeld(EventfoldError):
    """Another live runner holds the projection's lease (a reset must not pull the
    read model from under it). ``owner`` and ``expires`` name the holder and when
    its lease runs out unless it renews it."""

    def __init__(self, name: str, owner: str, expires: datetime) -> None:
        self.name = name
        self.owner = owner
        self.expires = expires
        super().__init__(
            f"projection {name!r} is being run by {owner} (lease until "
            f"{expires.isoformat(timespec='seconds')}): stop that runner first, or wait for "
            "it (reset(wait=...), the CLI's --wait), or rebuild without downtime beside it "
            "as a projection with a new name and switch readers to it (switch_projection, "
            "`eventfold projections switch`)"
        )


@dataclass(frozen=True)
class ErrorPolicy:
    """What to do when the handler raises on an event.

    Retry up to ``retries`` times with exponential back-off from ``backoff``
    seconds, then ``then``: ``"stop"`` (the runner raises ProjectionStopped
    and the status shows the error; the event is retried when it runs again)
    or ``"skip"`` (the event and error go to the dead-letter table, the
    projection moves on).
    """

    retries: int = 0
    backoff: float = 0.1
    then: Literal["stop", "skip"] = "stop"

    def __post_init__(self) -> None:
        check_non_negative("ErrorPolicy.retries", self.retries)
        check_seconds("ErrorPolicy.backoff", self.backoff, allow_zero=True)
        if self.then not in ("stop", "skip"):
            raise InvalidRequest(f'ErrorPolicy.then must be "stop" or "skip", not {self.then!r}')


#: Stop at the first failure (the default).
STOP = ErrorPolicy()
#: Record the failing event as a dead letter and go on.
SKIP = ErrorPolicy(then="skip")


@dataclass
class ProjectionContext:
    """What a handler gets besides the event.

    ``connection`` is the driver connection of the open transaction
    (``sqlite3.Connection`` or ``psycopg.Connection``), or None for in-memory
    projections and memory stores.
    """

    projection: Projection
    connection: Any

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run ``sql`` with ``?`` placeholders on SQLite or PostgreSQL alike.

        A small helper for read models meant to run on both: psycopg wants
        ``%s``, so each ``?`` becomes ``%s`` there (write no literal ``?``).
        """
        if self.connection is None:
            raise InvalidRequest(f"projection {self.projection.name!r} has no SQL connection")
        if isinstance(self.connection, sqlite3.Connection):
            return self.connection.execute(sql, params)
        return self.connection.execute(sql.replace("?", "%s"), params)


Handler = Callable[[ProjectionContext, RecordedEvent], None]


@dataclass(frozen=True)
class Projection:
    """A read model declared as data.

    :param name: unique name; the checkpoint is stored under it.
    :param handle: ``handle(ctx, event)``, called for each event in log order.
    :param types: event type names to receive (None: all).
    :param stream_prefix: only events of streams starting with this.
    :param setup: ``setup(ctx)`` creates the read model (e.g. ``CREATE TABLE IF
        NOT EXISTS``), run in a transaction before the first batch.
    :param teardown: ``teardown(ctx)`` drops it; :meth:`ProjectionRunner.rebuild`
        calls it before replaying from position 0.
    :param in_memory: the read model lives in process memory (see module doc).
    :param external: the handler's effects live outside the store's database
        (commands to other streams, messages, HTTP): each event is handled
        outside any transaction and the checkpoint advances after it, so an
        event may be handled again after a crash; make effects idempotent.
    """

    name: str
    handle: Handler
    types: Sequence[str] | None = None
    stream_prefix: str | None = None
    setup: Callable[[ProjectionContext], None] | None = None
    teardown: Callable[[ProjectionContext], None] | None = None
    in_memory: bool = False
    external: bool = False
    on_error: ErrorPolicy = STOP
    batch_size: int = 500

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise InvalidRequest("a projection needs a non-empty name")
        if not callable(self.handle):
            raise InvalidRequest(f"projection {self.name!r}: handle must be callable")
        check_non_negative("batch_size", self.batch_size, minimum=1)
        check_bool("in_memory", self.in_memory)
        check_bool("external", self.external)
        if not isinstance(self.on_error, ErrorPolicy):
            raise InvalidRequest(f"on_error must be an ErrorPolicy, not {self.on_error!r}")
        if self.stream_prefix is not None and (
            not isinstance(self.stream_prefix, str) or not self.stream_prefix
        ):
            raise InvalidRequest("stream_prefix must be a non-empty str or None")
        if self.in_memory and self.external:
            raise InvalidRequest("a projection is in_memory or external, not both")
        if self.types is not None and (
            isinstance(self.types, str) or not all(isinstance(t, str) for t in self.types)
        ):
            raise InvalidRequest("types must be a sequence of event type names")


@dataclass
class ProjectionStatus:
    """Where a projection stands.

    ``lag_events`` counts events in the log after its position (all types);
    ``lag_seconds`` is the age of the oldest of them (0 when caught up).
    ``busy_seconds`` grows while a handler is stuck in a batch (a hung HTTP
    call, a lock wait); a batch taking more than half the lease is also logged.
    """

    name: str
    position: int
    lag_events: int
    lag_seconds: float
    events_per_second: float
    last_error: str | None
    dead_letters: int
    running: bool
    #: Another runner holds the lease: this one waits as a hot standby.
    standby: bool = False
    #: How long the batch being handled now has taken so far (0: none running).
    busy_seconds: float = 0.0
    #: How often ``run_forever`` restarted the runner after it failed.
    restarts: int = 0


@dataclass(frozen=True)
class Progress:
    """How far a catch-up got: events handled so far, events left, estimated seconds left."""

    name: str
    done: int
    left: int
    eta_seconds: float


@dataclass
class _Rate:
    events: int = 0
    seconds: float = 0.0

    def add(self, count: int, elapsed: float) -> None:
        self.events += count
        self.seconds += elapsed

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class ProjectionRunner:
    """Feeds one projection from one store. See the module documentation."""

    def __init__(
        self,
        store: EventStore,
        projection: Projection,
        *,
        owner: str | None = None,
        lease_seconds: float = 10.0,
        poll_interval: float = 1.0,
        max_batch_seconds: float = 0.05,
    ) -> None:
        check_seconds("lease_seconds", lease_seconds)
        check_seconds("poll_interval", poll_interval)
        check_seconds("max_batch_seconds", max_batch_seconds)
        self.store = store
        self.projection = projection
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        #: A SQL read model's transaction commits after this long even if its
        #: batch has more events: other writers of the database get their turn,
        #: and a stop is noticed within it.
        self.max_batch_seconds = max_batch_seconds
        self._backend: ProjectionBackend = backend_for(store)
        self._memory_position = 0  # for in-memory projections
        self._position: int | None = None  # the stored checkpoint, as last read or written
        self._set_up = False
        self._last_error: str | None = None
        self._rate = _Rate()
        self._running = False
        self._standby = False  # the last run found the lease held by another runner
        self._stop = threading.Event()  # the current run's stop signal
        self._busy_since: float | None = None  # monotonic start of the batch in hand
        self._restarts = 0

    # -- running ------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """How far this projection has processed the log.

        Every event up to here is handled, or is not this projection's (other
        types or streams, deleted streams): a run that ends with such events
        moves the checkpoint over them, so waiting for new events and the
        status's lag start after them.
        """
        if self.projection.in_memory:
            return self._memory_position
        if self._position is None:
            checkpoint = self._backend.get(self.projection.name)
            self._position = checkpoint.position if checkpoint is not None else 0
        return self._position

    def run_once(self, stop: threading.Event | None = None) -> int:
        """Handle every event available now, then return how many were handled.

        Returns 0 without handling anything if another runner holds the lease.
        With ``stop`` set meanwhile it returns early: after the SQL batch in
        hand commits (at most ``max_batch_seconds`` of work), after the event in
        hand for external projections, after the page in hand in memory. The
        checkpoint is then at the last event handled.
        """
        return self._run_pages(stop=stop)

    def _run_pages(
        self,
        after_page: Callable[[int, float], None] | None = None,
        stop: threading.Event | None = None,
    ) -> int:
        """Handle pages until the log's end, or until ``stop`` is set.

        ``after_page(count, seconds)`` runs after each page; ``seconds`` spans
        its read and its handling.
        """
        self._stop = stop if stop is not None else threading.Event()
        if not self.projection.in_memory:
            self._standby = not self._backend.acquire(
                self.projection.name, self.owner, self.lease_seconds
            )
            if self._standby:
                return 0
            # Read the checkpoint once per run: another runner may have moved it
            # while this one had no lease. While the lease is held, only this
            # runner moves it, so the position is then tracked here.
            self._position = None
        self._setup()
        # Every event up to `head` is read below: at the end the checkpoint
        # moves over the ones this projection skips. Otherwise a log ending
        # with them would wake the runner's wait at once, again and again.
        head = self.store.last_position()
        handled = 0
        clock = time.perf_counter
        mark = clock()  # the end of the previous page: its time includes the read
        while True:
            # Until a read finds nothing: events the handlers appended (a
            # process manager's) are handled in this run too.
            before = handled
            pages = self._pages()
            try:
                for page in pages:
                    started = clock()
                    self._busy_since = time.monotonic()
                    try:
                        count = self._handle_page(page)
                    finally:
                        self._busy_since = None
                    done = clock()
                    self._note_slow(done - started, len(page))
                    self._rate.add(count, done - started)
                    handled += count
                    if after_page is not None:
                        after_page(count, done - mark)
                        done = clock()
                    mark = done
                    if self._stop.is_set():
                        # Stopped: the checkpoint stays at the last event handled,
                        # never moved over events not yet read.
                        return handled
            finally:
                pages.close()  # a streaming read gives its connection back now
            if handled == before:
                break
        self._skip_to(head)
        return handled

    def _note_slow(self, seconds: float, events: int) -> None:
        """Log a batch that took more than half the lease (another runner may take over)."""
        if seconds > self.lease_seconds / 2 and not self.projection.in_memory:
            logger.warning(
                "projection %s: a batch of %d events took %.1f s, more than half the "
                "lease (%.1f s): a handler is slow or stuck; past the lease another "
                "runner takes over and this one's writes are refused",
                self.projection.name,
                events,
                seconds,
                self.lease_seconds,
            )

    def _pages(self) -> Generator[list[RecordedEvent], None, None]:
        """The log after this runner's position, decoded, in pages of ``batch_size``."""
        projection, store = self.projection, self.store
        types = list(projection.types) if projection.types is not None else None
        if types is not None:
            # What the filter means now: renamed types match their old stored names.
            types = store.serializer.registry.stored_names(types)
        size, prefix = projection.batch_size, projection.stream_prefix
        if not isinstance(store, StoreBase):
            after = self.position
            while events := _read_page_lenient(store, after, types, prefix, size):
                yield events
                after = events[-1].position
            return
        # The store's own page reads: one call per batch instead of a generator
        # step per event (catch-up speed is read speed).
        store._check_open()
        serializer = store.serializer
        rows: Generator[Sequence[Row], None, None]
        if projection.in_memory:
            # May read ahead (PostgreSQL streams a backlog), holding a connection
            # meanwhile. SQL read models take connections of their own for each
            # batch, so they read page by page and never wait on themselves.
            rows = store._read_all_pages(self.position, types, prefix, size)
        else:
            # The base class's page-by-page read, never a backend's read-ahead.
            rows = StoreBase._read_all_pages(store, self.position, types, prefix, size)
        try:
            for page in rows:
                # An event that cannot be decoded meets the error policy alone.
                yield decode_rows_lenient(serializer, page)
        finally:
            rows.close()

    def run(self, stop: threading.Event | None = None) -> None:
        """Catch up, then follow new events until ``stop`` is set.

        A runner without the lease waits and tries again each poll interval,
        so a second process is a hot standby that takes over on failure.
        Retryable store errors (a database restart) are logged, shown in
        :meth:`status` and retried with back-off; a lost lease sends it back to
        standby; other errors end the run (:meth:`run_forever` restarts it).
        ``stop`` is noticed within one batch, also during a catch-up: set it
        from a SIGTERM handler for a clean shutdown.
        """
        stop = stop or threading.Event()
        self._running = True
        pause = self.poll_interval / 10
        try:
            while not stop.is_set():
                try:
                    self.run_once(stop)
                    if stop.is_set():
                        break
                    if self._standby:
                        stop.wait(self.poll_interval)  # then try for the lease again
                    else:
                        self._backend.wait(self.position, self.poll_interval, stop)
                    pause = self.poll_interval / 10
                except LeaseLost as exc:
                    # Another runner took over (this one was too slow to renew, or
                    # an operator reset the projection): back to hot standby.
                    self._standby = True
                    self._position = None
                    self._last_error = f"LeaseLost: {exc}"
                    logger.warning("projection %s: %s; now on standby", self.projection.name, exc)
                    stop.wait(self.poll_interval)
                except StoreError as exc:
                    if not exc.retryable:
                        raise
                    # The database is restarting or unreachable: keep the error
                    # visible in status() and try again, backing off.
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    logger.warning("projection %s: %s", self.projection.name, exc)
                    stop.wait(pause)
                    pause = min(pause * 2, self.poll_interval)
        finally:
            self._running = False
            self._backend.close()
            self.release()

    def run_forever(
        self, stop: threading.Event | None = None, *, max_backoff: float = 60.0
    ) -> None:
        """:meth:`run`, restarted after it fails, until ``stop`` is set.

        A failure (a handler's error under the "stop" policy, a store error that
        is not retryable, a bug) is logged with its traceback, shown in
        :meth:`status` (``last_error``, ``restarts``) and followed by a restart
        after a back-off growing from ``poll_interval / 10`` to ``max_backoff``
        seconds (reset after a run that lasted longer than ``max_backoff``).
        This is how a service runs its projections: one thread per runner,
        ``run_forever(stop)``, and ``stop.set()`` at shutdown.
        """
        check_seconds("max_backoff", max_backoff)
        stop = stop or threading.Event()
        pause = self.poll_interval / 10
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.run(stop)
            except Exception as exc:
                if time.monotonic() - started > max_backoff:
                    pause = self.poll_interval / 10
                self._restarts += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                logger.error(
                    "projection %s failed (restart %d in %.2f s): %s",
                    self.projection.name,
                    self._restarts,
                    pause,
                    exc,
                    exc_info=exc,
                )
                self._running = True  # supervised: it is coming back
                stop.wait(pause)
                self._running = False
                pause = min(pause * 2, max_backoff)

    def release(self) -> None:
        """Give up the lease now (after ``run_once``/``catch_up`` in a short-lived process).

        Otherwise the lease runs out by itself ``lease_seconds`` after the last batch.
        """
        if not self.projection.in_memory:
            self._backend.release(self.projection.name, self.owner)

    def reset(self, *, wait: float = 0.0) -> None:
        """Tear the read model down and forget the checkpoint (the next run replays all).

        A reset never pulls the read model from under a live runner: it first
        takes the projection's lease, waiting up to ``wait`` seconds for the
        holder to let it go, else raises :class:`LeaseHeld` naming the holder.
        The teardown, the checkpoint back at 0 and the projection's dead
        letters cleared commit in one transaction, under the lease (a runner
        that held it before can no longer write), which is then released.
        """
        projection = self.projection
        if projection.in_memory:
            self._memory_position = 0
            if projection.teardown is not None:
                projection.teardown(ProjectionContext(projection, None))
            self._set_up = False
            return
        check_seconds("wait", wait, allow_zero=True)
        self._take_lease(wait)
        try:
            with self._backend.transaction() as conn:
                if projection.teardown is not None:
                    projection.teardown(ProjectionContext(projection, conn))
                if not self._backend.reset(conn, projection.name, self.owner):
                    raise self._lease_lost()
        finally:
            self._position = None
            self._set_up = False
            self.release()

    def _take_lease(self, wait: float) -> None:
        """Hold the lease (for an operation on the read model), or raise LeaseHeld."""
        name = self.projection.name
        deadline = time.monotonic() + wait
        while not self._backend.acquire(name, self.owner, self.lease_seconds):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                holder = self._backend.get(name)
                owner = holder.owner if holder is not None and holder.owner else "another runner"
                expires = us_to_datetime(holder.lease_expires_us if holder is not None else 0)
                raise LeaseHeld(name, owner, expires)
            time.sleep(min(remaining, self.poll_interval, 0.1))  # the holder's lease, polled

    def rebuild(self) -> int:
        """Tear the read model down, forget the checkpoint, replay from position 0.

        Returns the number of events handled. (For a rebuild without downtime,
        declare a second projection with a new name and new tables, let it catch
        up beside the live one, then switch readers to it.)
        """
        self.reset()
        return self.run_once()

    def catch_up(self, progress: Callable[[Progress], None] | None = None) -> int:
        """Like :meth:`run_once`, reporting ``Progress`` (done, left, ETA) after each batch."""
        if progress is None:
            return self.run_once()
        done = 0
        name = self.projection.name

        def report(count: int, seconds: float) -> None:
            nonlocal done
            done += count
            left, _ = self._backend.backlog(self.position)
            rate = count / max(seconds, 1e-9)
            progress(Progress(name, done, left, left / rate if rate else 0.0))

        return self._run_pages(report)

    def status(self) -> ProjectionStatus:
        """Position, lag, throughput and errors of this projection."""
        if not self.projection.in_memory:
            self._position = None  # report the stored checkpoint, whoever moved it
        position = self.position
        lag, oldest = self._backend.backlog(position)
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0
        busy = self._busy_since
        return ProjectionStatus(
            self.projection.name,
            position,
            lag,
            max(age, 0.0),
            self._rate.per_second,
            self._last_error,
            len(self.dead_letters()),
            self._running,
            self._standby,
            time.monotonic() - busy if busy is not None else 0.0,
            self._restarts,
        )

    def dead_letters(self) -> list[DeadLetter]:
        """The events this projection skipped, with their errors."""
        return self._backend.dead_letters(self.projection.name)

    # -- internals ------------------------------------------------------------------------

    def _setup(self) -> None:
        if self._set_up:
            return
        projection = self.projection
        if projection.setup is not None:
            with self._backend.transaction() as conn:
                projection.setup(ProjectionContext(projection, conn))
        self._set_up = True

    def _handle_page(self, page: list[RecordedEvent]) -> int:
        """Handle ``page``; return how many of its events were handled (fewer if stopped)."""
        projection = self.projection
        if projection.in_memory:
            self._handle_in_memory(page)
            return len(page)
        stop = self._stop
        if projection.external or not self._backend.transactional:
            # Effects that cannot be rolled back: handle and checkpoint one by one.
            for index, event in enumerate(page):
                if index and stop.is_set():
                    return index
                self._handle_alone(event)
            return len(page)
        done = 0
        while done < len(page):
            if done and stop.is_set():
                return done
            rest = page[done:]
            try:
                done += self._commit(rest)
            except (ProjectionStopped, LeaseLost):
                raise
            except StoreError as exc:
                if exc.retryable:
                    # The outcome of the commit may be unknown (its answer was lost):
                    # re-read the checkpoint before handling anything again.
                    raise
                self._handle_alone_each(rest)
                return len(page)
            except Exception:
                # The transaction rolled back as a whole: redo it event by event so
                # that exactly the failing one meets the error policy.
                self._handle_alone_each(rest)
                return len(page)
        return done

    def _handle_alone_each(self, events: list[RecordedEvent]) -> None:
        for event in events:
            self._handle_alone(event)

    def _commit(self, events: list[RecordedEvent]) -> int:
        """Handle a prefix of ``events`` in one transaction; return its length.

        The transaction ends after ``max_batch_seconds`` of handling (at least
        one event): other writers of the database wait at most that long.
        """
        projection = self.projection
        backend = self._backend
        limit = time.monotonic() + self.max_batch_seconds
        clock, stop = time.monotonic, self._stop
        count = 0
        with backend.transaction() as conn:
            if not backend.transactional and not backend.owns(projection.name, self.owner):
                # Effects here cannot be rolled back: check the lease before them.
                raise self._lease_lost()
            ctx = ProjectionContext(projection, conn)
            handle = projection.handle
            for event in events:
                if type(event.data) is Undecodable:
                    event = self._decoded(event)  # noqa: PLW2901 - or raises for the policy
                handle(ctx, event)
                count += 1
                if clock() > limit or stop.is_set():
                    break
            last = events[count - 1].position
            self._advance(conn, last)
        self._position = last
        self._last_error = None
        return count

    def _skip_to(self, head: int) -> None:
        """Move the checkpoint over events up to ``head`` that this projection skips."""
        if head <= self.position:
            return
        if self.projection.in_memory:
            self._memory_position = head
            return
        with self._backend.transaction() as conn:
            self._advance(conn, head)
        self._position = head

    def _advance(self, conn: Any, position: int) -> None:
        """Move the stored checkpoint in ``conn``'s transaction, if the lease is still ours."""
        backend = self._backend
        if not backend.advance(
            conn, self.projection.name, position, self.owner, self.lease_seconds
        ):
            raise self._lease_lost()

    def _lease_lost(self) -> LeaseLost:
        return LeaseLost(f"projection {self.projection.name!r}: another runner took over")

    def _handle_in_memory(self, page: list[RecordedEvent]) -> None:
        # The fast path: one loop, no per-event bookkeeping. The position is
        # only remembered after the page, or up to a failing event, which then
        # meets the error policy with one attempt already spent.
        projection = self.projection
        handle = projection.handle
        ctx = ProjectionContext(projection, None)
        start = 0
        while start < len(page):
            index = start
            try:
                for index in range(start, len(page)):
                    event = page[index]
                    if type(event.data) is Undecodable:
                        event = self._decoded(event)  # or raises for the policy
                    handle(ctx, event)
            except Exception as exc:
                if index > start:
                    self._memory_position = page[index - 1].position
                self._handle_alone(page[index], first_error=exc)
                start = index + 1
                continue
            self._memory_position = page[-1].position
            self._last_error = None
            return

    def _handle_alone(self, event: RecordedEvent, first_error: Exception | None = None) -> None:
        projection = self.projection
        policy = projection.on_error
        delay = policy.backoff
        error = first_error
        if error is not None:
            self._note_error(event, error)
        for attempt in range(1 if error is not None else 0, policy.retries + 1):
            if attempt > 0:
                time.sleep(delay)  # back-off before the retry, not synchronisation
                delay *= 2
            try:
                if projection.in_memory:
                    projection.handle(ProjectionContext(projection, None), self._decoded(event))
                    self._memory_position = event.position
                    self._last_error = None
                elif projection.external:
                    self._handle_external(event)
                else:
                    self._commit([event])
                return
            except LeaseLost:
                raise
            except Exception as exc:
                error = exc
                self._note_error(event, exc)
        if error is None:  # unreachable: every attempt either returned or failed
            return
        if policy.then == "stop":
            raise ProjectionStopped(projection.name, event, error) from error
        self._skip(event, error)

    def _decoded(self, event: RecordedEvent) -> RecordedEvent:
        """``event`` decoded, if it was read undecodable; else raise why it cannot be.

        Decoding is tried again each time (a retry after an upcaster was
        registered succeeds), so a decode error meets the error policy like a
        handler's exception: retried, skipped to the dead letters, or stopping
        the projection with the status saying why.
        """
        data = event.data
        if type(data) is not Undecodable:
            return event
        if data.row is not None:
            return decode_row(self.store.serializer, data.row)
        # A store that gave no row: read the event again through its public API.
        for again in self.store.read(event.stream, from_version=event.version, limit=1):
            if again.position == event.position:
                return again
        raise data.error

    def _note_error(self, event: RecordedEvent, error: Exception) -> None:
        self._last_error = f"{type(error).__name__}: {error} (position {event.position})"
        logger.warning("projection %s: %s", self.projection.name, self._last_error)

    def _handle_external(self, event: RecordedEvent) -> None:
        # Effects outside the database cannot share its transaction: run the
        # handler first, then record the progress (at-least-once delivery).
        projection, backend = self.projection, self._backend
        if not backend.owns(projection.name, self.owner):
            raise self._lease_lost()
        projection.handle(ProjectionContext(projection, None), self._decoded(event))
        with backend.transaction() as conn:
            self._advance(conn, event.position)
        self._position = event.position
        self._last_error = None

    def _skip(self, event: RecordedEvent, error: BaseException) -> None:
        projection = self.projection
        with self._backend.transaction() as conn:
            self._backend.dead_letter(
                conn, projection.name, event, f"{type(error).__name__}: {error}"
            )
            if projection.in_memory:
                self._memory_position = event.position
            else:
                self._advance(conn, event.position)
                self._position = event.position


def _read_page_lenient(
    store: EventStore, after: int, types: list[str] | None, prefix: str | None, size: int
) -> list[RecordedEvent]:
    """A page of ``read_all`` from any store; an event it cannot decode becomes one
    whose data is Undecodable (when the error says where it is), so that it meets
    the projection's error policy instead of stopping every read at it."""
    events: list[RecordedEvent] = []
    while len(events) < size:
        try:
            for event in store.read_all(
                after=after, types=types, stream_prefix=prefix, limit=size - len(events)
            ):
                events.append(event)
                after = event.position
            return events
        except SerializationError as exc:
            if exc.position is None or exc.stream is None or exc.version is None:
                raise
            raw_id = exc.event_id.bytes if exc.event_id is not None else bytes(16)
            type_name = getattr(exc, "type_name", "")
            events.append(
                RecordedEvent(
                    raw_id,
                    exc.stream,
                    exc.version,
                    exc.position,
                    type_name,
                    Undecodable(exc, None),
                    EMPTY_METADATA,
                    0,
                )
            )
            after = exc.position
    return events


def switch_projection(store: EventStore, alias: str, projection: Projection | str) -> None:
    """Point readers of ``alias`` at ``projection``, in one atomic write.

    The rebuild without downtime: declare the new version of a read model as
    a second projection (new name, new tables), let its runner catch up
    beside the live one (``catch_up(progress=...)`` reports an ETA), then
    switch. Readers look the current one up with :func:`active_projection`.
    """
    name = projection if isinstance(projection, str) else projection.name
    if not isinstance(name, str) or not name or not isinstance(alias, str) or not alias:
        raise InvalidRequest("alias and projection name must be non-empty str")
    backend_for(store).set_alias(alias, name)


def active_projection(store: EventStore, alias: str) -> str | None:
    """The name of the projection readers of ``alias`` should use (None: never switched)."""
    return backend_for(store).get_alias(alias)


def attach_inline(store: EventStore, projection: Projection) -> None:
    """Run ``projection`` inside the transaction of every append to ``store``.

    Read-your-writes: once ``append`` (or a command) returns, the read model
    already shows its events. The price is on the write path: the handler
    runs in every append, and if it raises, the append fails and nothing is
    stored. Supported on the sync stores. On the memory store the handler
    runs under the store's lock and must not call the store, and a handler
    that fails midway through a batch keeps its own effects of the events
    before (there is no database transaction to roll them back).
    """
    if not isinstance(store, StoreBase):
        raise ConfigurationError("inline projections need a sync store (SqliteEventStore, ...)")
    if projection.in_memory or projection.external:
        raise InvalidRequest("an inline projection writes in the append's transaction")
    backend = backend_for(store)
    if projection.setup is not None:
        with backend.transaction() as conn:
            projection.setup(ProjectionContext(projection, conn))
    prefix = projection.stream_prefix
    # The filter's stored names, computed again when names or aliases change.
    cache: list[Any] = [None, -1, None]

    def hook(conn: Any, rows: list[Row]) -> None:
        registry = store.serializer.registry
        if projection.types is None:
            types = None
        elif cache[0] is registry and cache[1] == registry.generation:
            types = cache[2]
        else:
            types = frozenset(registry.stored_names(list(projection.types)))
            cache[:] = [registry, registry.generation, types]
        wanted = [row for row in rows if row_matches(row, types, prefix)]
        if wanted:
            ctx = ProjectionContext(projection, conn)
            for event in decode_rows(store.serializer, wanted):
                projection.handle(ctx, event)

    store._inline.append(hook)


def projection_statuses(store: EventStore) -> list[ProjectionStatus]:
    """The status of every projection with a stored checkpoint (for tools and dashboards).

    ``running`` means a runner holds an unexpired lease; ``events_per_second``
    and ``last_error`` are only known to the runner itself (0 and None here).
    """
    backend = backend_for(store)
    now = int(time.time() * 1_000_000)
    statuses = []
    for name in backend.names():
        checkpoint = backend.get(name)
        if checkpoint is None:
            continue
        lag, oldest = backend.backlog(checkpoint.position)
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0
        statuses.append(
            ProjectionStatus(
                name,
                checkpoint.position,
                lag,
                max(age, 0.0),
                0.0,
                None,
                len(backend.dead_letters(name)),
                checkpoint.owner is not None and checkpoint.lease_expires_us > now,
            )
        )
    return statuses
