"""The projection runner: a projection fed from a store's log through its public seams.

The runner uses only the store's public API and its checkpoints
(``store.checkpoints()``, :class:`eventfold.store.AsyncCheckpoints`): any store
that provides them, eventfold's or a third party's, runs projections.

Handlers may be ``async def`` (awaited) or plain  # unasync: Generated from the async flavour,
functions; the sync flavour is generated from this.  # unasync: which also awaits async handlers.
"""

from __future__ import annotations

import asyncio  # unasync: import threading
import inspect
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from eventfold import telemetry
from eventfold._acompat import AsyncClock
from eventfold._checks import check_bool, check_seconds
from eventfold._clock import now_us, us_to_datetime
from eventfold._logs import fields
from eventfold.errors import (
    ConfigurationError,
    InvalidRequest,
    LeaseHeld,
    LeaseLost,
    ProjectionStopped,
    StoreError,
)
from eventfold.events import RecordedEvent
from eventfold.projections._model import Progress, Projection, ProjectionContext, ProjectionStatus
from eventfold.store import (
    AsyncCheckpoints,
    AsyncEventStore,
    AsyncTransaction,
    DeadLetter,
    Undecodable,
)

__all__ = ["AsyncProjectionRunner", "async_checkpoints_of", "async_status_of"]

logger = logging.getLogger("eventfold.projections")


#: A run's stop signal: an event set to end it (within one batch).
Stop = asyncio.Event  # unasync: Stop = threading.Event
#: Whether this is the async flavour (the generated sync module says False).
_ASYNC = True  # unasync: _ASYNC = False
#: How a page iterator gives back what it holds.
_CLOSE = "aclose"  # unasync: _CLOSE = "close"


async def _with_head(
    pages: AsyncIterator[list[RecordedEvent]], head: int
) -> AsyncIterator[tuple[list[RecordedEvent], int]]:
    """``pages``, each with ``head`` (read before them: every event up to it is in them)."""
    try:
        async for page in pages:
            yield page, head
    finally:
        close = getattr(pages, _CLOSE, None)
        if close is not None:
            await close()  # a streaming read gives its connection back now


def async_checkpoints_of(store: AsyncEventStore) -> AsyncCheckpoints:
    """The checkpoints of ``store`` (ConfigurationError for a store of the other flavour)."""
    get = getattr(store, "checkpoints", None)
    if get is None:
        raise ConfigurationError(
            f"{type(store).__name__} gives no checkpoints(): a projection needs a store that "
            "provides checkpoints (the store package's ProcessCheckpoints work over any store)"
        )
    checkpoints: Any = get()
    check_flavour(store, checkpoints.get)
    result: AsyncCheckpoints = checkpoints
    return result


def check_flavour(store: object, method: Callable[..., Any]) -> None:
    """Refuse a store of the other flavour (``method`` is one of its I/O methods)."""
    if inspect.iscoroutinefunction(method) is not _ASYNC:
        needs = "an async store" if _ASYNC else "a sync store"
        other = "the sync flavour" if _ASYNC else "the async flavour (Async..., async_...)"
        raise ConfigurationError(
            f"this projection API needs {needs}, not {type(store).__name__}: use {other}"
        )


def check_handlers(projection: Projection) -> None:
    """Refuse ``async def`` handlers on the sync runner: nothing awaits them there."""
    if _ASYNC:
        return
    for role in ("handle", "setup", "teardown"):
        function = getattr(projection, role)
        if function is not None and inspect.iscoroutinefunction(function):
            raise ConfigurationError(
                f"projection {projection.name!r}: its {role} is async def; run it with "
                "AsyncProjectionRunner on an async store"
            )


async def _call(function: Callable[..., Any], *args: Any) -> None:
    """Call a handler, awaiting what an ``async def`` one returns."""
    result = function(*args)
    if result is not None:
        await _settle(result)


async def _settle(result: object) -> None:
    """What a handler returned: awaited if awaitable, else ignored (a plain one's value)."""
    if inspect.isawaitable(result):
        await result  # unasync: _refuse(result)


def _refuse(result: object) -> None:
    """The sync runner met an awaitable from a handler: refuse it, loudly."""
    close = getattr(result, "close", None)
    if close is not None:
        close()  # no "coroutine was never awaited" warning on top of the error
    raise ConfigurationError(
        "a projection handler returned an awaitable: it is async, and the sync "
        "ProjectionRunner cannot await it; run it with AsyncProjectionRunner"
    )


async def async_status_of(
    checkpoints: AsyncCheckpoints, name: str, position: int, **known: Any
) -> ProjectionStatus:
    """The status of projection ``name`` at ``position``: lag from the store, the rest given."""
    lag, oldest = await checkpoints.backlog(position)
    age = (us_to_datetime(now_us()) - oldest).total_seconds() if oldest is not None else 0.0
    return ProjectionStatus(
        name,
        position,
        lag,
        max(age, 0.0),
        dead_letters=len(await checkpoints.dead_letters(name)),
        held_back_by=tuple(await checkpoints.holdups()) if lag else (),
        **known,
    )


#: ``after_page(count, seconds)``: told after each page of a run.
_Told: TypeAlias = Awaitable[None]  # unasync: _Told: TypeAlias = None
AfterPage = Callable[[int, float], _Told]
_UNKNOWN = "the runner has not read its checkpoint yet: await runner.get_position() reads it"


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


class AsyncProjectionRunner:
    """Feeds one projection from one store. See the module documentation."""

    def __init__(
        self,
        store: AsyncEventStore,
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
        check_handlers(projection)
        self.store = store
        self.projection = projection
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        #: A SQL read model's transaction commits after this long even if its
        #: batch has more events: other writers of the database get their turn,
        #: and a stop is noticed within it.
        self.max_batch_seconds = max_batch_seconds
        self._checkpoints: AsyncCheckpoints = async_checkpoints_of(store)
        # Optional on checkpoints: where this process's runners moved them (LocalPositions).
        self._local: Any = getattr(self._checkpoints, "local_positions", None)
        # Optional too: pages that say how far each read got (no head read first).
        self._pages_with_head: Any = getattr(self._checkpoints, "pages_with_head", None)
        self._memory_position = 0  # for in-memory projections
        self._position: int | None = None  # the stored checkpoint, as last read or written
        self._set_up = False
        self._last_error: str | None = None
        self._rate = _Rate()
        self._running = False
        self._standby = False  # the last run found the lease held by another runner
        self._stop = Stop()  # the current run's stop signal
        self._busy_since: float | None = None  # monotonic start of the batch in hand
        self._restarts = 0
        self._started = False  # an in-memory read model took its start_from
        self._replay_until = 0  # events up to here were handled before a reset
        self._lease_until = 0.0  # monotonic time the lease this runner holds runs out
        self._backlog_due = 0.0  # monotonic time the lag in events is counted next
        self._backlog = 0  # the lag in events as last counted (for the metric)

    # -- running ------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """How far this projection has processed the log.

        Every event up to here is handled, or is not this projection's (other
        types or streams, deleted streams): a run that ends with such events
        moves the checkpoint over them, so waiting for new events and the
        status's lag start after them.

        This is the position as the runner last read or wrote it (read from
        the store if not known yet). An async runner reads nothing here:
        before its first run (or after ``status()``) this raises
        InvalidRequest; ``await runner.get_position()`` reads the store.
        """
        if self.projection.in_memory:
            return self._memory_position
        if self._position is None:
            raise InvalidRequest(_UNKNOWN)  # unasync: self._position = self._stored_position()
        return self._position

    async def get_position(self) -> int:
        """:attr:`position`, read from the store if this runner does not know it yet."""
        if self.projection.in_memory:
            return self._memory_position
        if self._position is None:
            self._position = await self._stored_position()
        return self._position

    async def _stored_position(self) -> int:
        checkpoint = await self._checkpoints.get(self.projection.name)
        return checkpoint.position if checkpoint is not None else 0

    async def run_once(self, stop: Stop | None = None) -> int:
        """Handle every event available now, then return how many were handled.

        Returns 0 without handling anything if another runner holds the lease.
        With ``stop`` set meanwhile it returns early: after the SQL batch in
        hand commits (at most ``max_batch_seconds`` of work), after the event in
        hand for external projections, after the page in hand in memory. The
        checkpoint is then at the last event handled.
        """
        return await self._run_pages(stop=stop)

    async def _run_pages(
        self,
        after_page: AfterPage | None = None,
        stop: Stop | None = None,
        *,
        repeat: bool = True,
    ) -> int:
        """Handle pages until the log's end, or until ``stop`` is set.

        ``after_page(count, seconds)`` runs after each page; ``seconds`` spans
        its read and its handling. ``repeat``: read again after a pass that
        handled events, until one finds nothing. A live runner repeats only
        for an external projection (a process manager appends; other news
        wakes its next wait at once): one round trip less per wake.
        """
        try:
            return await self._pages_until_end(after_page, stop, repeat)
        except BaseException:
            # The stored checkpoint may be ahead of the one tracked here (a
            # commit whose answer was lost): take the lease and read it again.
            self._lease_until = 0.0
            self._let_go()
            raise

    async def _pages_until_end(
        self,
        after_page: AfterPage | None,
        stop: Stop | None,
        repeat: bool,
    ) -> int:
        self._stop = stop if stop is not None else Stop()
        if not await self._hold_or_start():
            return 0
        self._started = True
        await self._setup()
        # Every event up to `head` is read below: at the end the checkpoint
        # moves over the ones this projection skips. Otherwise a log ending
        # with them would wake the runner's wait at once, again and again (and
        # a wait_for such an event's position would never return). Checkpoints
        # whose pages say how far each read got need no head read first.
        head = 0 if self._pages_with_head is not None else await self.store.last_position()
        handled = 0
        clock = time.perf_counter
        mark = clock()  # the end of the previous page: its time includes the read
        while True:
            # Until a read finds nothing (``repeat``): events the handlers
            # appended (a process manager's) are handled in this run too.
            before = handled
            pages = self._pages(await self.get_position(), head)
            try:
                async for page, reached in pages:
                    head = max(head, reached)
                    if not page:
                        continue
                    started = clock()
                    self._busy_since = time.monotonic()
                    try:
                        count = await self._handle_page(page)
                    finally:
                        self._busy_since = None
                    done = clock()
                    self._note_slow(done - started, page)
                    self._rate.add(count, done - started)
                    handled += count
                    if after_page is not None:
                        await after_page(count, done - mark)
                        done = clock()
                    mark = done
                    await self._count_backlog(final=False)
                    if self._stop.is_set():
                        # Stopped: the checkpoint stays at the last event handled,
                        # never moved over events not yet read.
                        return handled
            finally:
                close = getattr(pages, _CLOSE, None)
                if close is not None:
                    await close()  # a streaming read gives its connection back now
            if handled == before or not repeat:
                break
        await self._skip_to(head)
        await self._count_backlog(final=True)
        return handled

    async def _count_backlog(self, *, final: bool) -> None:
        """Set the lag-in-events metric: at most once a second, and at a run's end if it lagged.

        Only with metrics on: it costs a count of the log after the position.
        """
        if not telemetry.measuring():
            return
        now = time.monotonic()
        if now < self._backlog_due and not (final and self._backlog):
            return
        self._backlog_due = now + 1.0
        self._backlog, _ = await self._checkpoints.backlog(await self.get_position())
        telemetry.record(
            "eventfold.projection.lag.events",
            self._backlog,
            {"eventfold.projection": self.projection.name},
        )

    async def _hold_or_start(self) -> bool:
        """Hold the lease (False: another runner does: standby), or start in memory."""
        if not self.projection.in_memory and not self._holds_lease():
            new = await self._checkpoints.get(self.projection.name) is None
            self._standby = not await self._checkpoints.acquire(
                self.projection.name, self.owner, self.lease_seconds
            )
            if self._standby:
                self._lease_until = 0.0
                self._let_go()
                return False
            self._lease_until = time.monotonic() + self.lease_seconds
            # Read the checkpoint when the lease is taken: another runner may have
            # moved it while this one had none. While the lease is held, only
            # this runner moves it, so the position is then tracked here (and a
            # run woken by news goes straight to reading: no lease or checkpoint
            # round trip on the live path).
            self._position = None
            if new and await self.get_position() == 0:
                await self._skip_to(await self._start_position())
        elif not self._started:
            self._memory_position = max(self._memory_position, await self._start_position())
        return True

    async def _start_position(self) -> int:
        """Where a new projection starts (``start_from``): events after this are its."""
        start = self.projection.start_from
        if start == "beginning":
            return 0
        if start == "now":
            return await self.store.last_position()
        if isinstance(start, datetime):
            async for first in self.store.read_all(since=start, limit=1):
                return first.position - 1
            return await self.store.last_position()
        return int(start)

    def _note_slow(self, seconds: float, page: list[RecordedEvent]) -> None:
        """Log a batch that took more than half the lease (another runner may take over)."""
        if seconds > self.lease_seconds / 2 and not self.projection.in_memory:
            logger.warning(
                "projection %s: a batch of %d events from position %d took %.1f s, more "
                "than half the lease (%.1f s): a handler is slow or stuck; past the lease "
                "another runner takes over and this one's writes are refused",
                self.projection.name,
                len(page),
                page[0].position,
                seconds,
                self.lease_seconds,
                extra=fields(projection=self.projection.name, event=page[0]),
            )

    def _pages(self, position: int, head: int) -> AsyncIterator[tuple[list[RecordedEvent], int]]:
        """The log after ``position``, decoded, in pages of ``batch_size``, each with
        how far the log was read (``head``, read before, where the checkpoints
        cannot say)."""
        projection, store = self.projection, self.store
        types = list(projection.types) if projection.types is not None else None
        if types is not None:
            # What the filter means now: renamed types match their old stored names.
            types = store.serializer.registry.stored_names(types)
        # An in-memory read model may read ahead (PostgreSQL streams a backlog),
        # holding a connection meanwhile. SQL read models take connections of
        # their own for each batch, so they read page by page.
        reader = self._pages_with_head
        if reader is not None:
            found: AsyncIterator[tuple[list[RecordedEvent], int]] = reader(
                position,
                types,
                projection.stream_prefix,
                projection.batch_size,
                read_ahead=projection.in_memory,
            )
            return found
        pages = self._checkpoints.pages(
            position,
            types,
            projection.stream_prefix,
            projection.batch_size,
            read_ahead=projection.in_memory,
        )
        return _with_head(pages, head)

    async def run(self, stop: Stop | None = None) -> None:
        """Catch up, then follow new events until ``stop`` is set.

        A runner without the lease waits and tries again each poll interval,
        so a second process is a hot standby that takes over on failure.
        Retryable store errors (a database restart) are logged, shown in
        :meth:`status` and retried with back-off; a lost lease sends it back to
        standby; other errors end the run (:meth:`run_forever` restarts it).
        ``stop`` is noticed within one batch, also during a catch-up: set it
        from a SIGTERM handler for a clean shutdown.
        """
        stop = stop or Stop()
        self._running = True
        pause = self.poll_interval / 10
        try:
            while not stop.is_set():
                try:
                    await self._run_pages(stop=stop, repeat=self.projection.external)
                    if stop.is_set():
                        break
                    if self._standby:
                        await AsyncClock.wait(stop, self.poll_interval)  # then try again
                    else:
                        position = await self.get_position()
                        await self._checkpoints.wait(position, self.poll_interval, stop)
                    pause = self.poll_interval / 10
                except LeaseLost as exc:
                    # Another runner took over (this one was too slow to renew, or
                    # an operator reset the projection): back to hot standby.
                    self._standby = True
                    where = self._position
                    self._position = None
                    self._last_error = f"LeaseLost: {exc}"
                    logger.warning(
                        "projection %s at position %s: %s; now on standby",
                        self.projection.name,
                        where,
                        exc,
                        extra=fields(projection=self.projection.name, position=where),
                    )
                    await AsyncClock.wait(stop, self.poll_interval)
                except StoreError as exc:
                    if not exc.retryable:
                        raise
                    # The database is restarting or unreachable: keep the error
                    # visible in status() and try again, backing off.
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    logger.warning(
                        "projection %s at position %s: %s; trying again in %.2f s",
                        self.projection.name,
                        self._position,
                        exc,
                        pause,
                        extra=fields(projection=self.projection.name, position=self._position),
                    )
                    await AsyncClock.wait(stop, pause)
                    pause = min(pause * 2, self.poll_interval)
        finally:
            self._running = False
            await self._checkpoints.close()
            await self.release()

    async def run_forever(self, stop: Stop | None = None, *, max_backoff: float = 60.0) -> None:
        """:meth:`run`, restarted after it fails, until ``stop`` is set.

        A failure (a handler's error under the "stop" policy, a store error that
        is not retryable, a bug) is logged with its traceback, shown in
        :meth:`status` (``last_error``, ``restarts``) and followed by a restart
        after a back-off growing from ``poll_interval / 10`` to ``max_backoff``
        seconds (reset after a run that lasted longer than ``max_backoff``).
        This is how a service runs its projections: one thread (a task, for
        the async runner) per runner, ``run_forever(stop)``, and ``stop.set()``
        at shutdown (or the task cancelled).
        """
        check_seconds("max_backoff", max_backoff)
        stop = stop or Stop()
        pause = self.poll_interval / 10
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.run(stop)
            except Exception as exc:
                if time.monotonic() - started > max_backoff:
                    pause = self.poll_interval / 10
                self._restarts += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
                stopped = exc.event if isinstance(exc, ProjectionStopped) else None
                logger.error(
                    "projection %s failed at position %s (restart %d in %.2f s): %s",
                    self.projection.name,
                    stopped.position if stopped is not None else self._position,
                    self._restarts,
                    pause,
                    exc,
                    exc_info=exc,
                    extra=fields(
                        projection=self.projection.name, position=self._position, event=stopped
                    ),
                )
                self._running = True  # supervised: it is coming back
                await AsyncClock.wait(stop, pause)
                self._running = False
                pause = min(pause * 2, max_backoff)

    async def release(self) -> None:
        """Give up the lease now (after ``run_once``/``catch_up`` in a short-lived process).

        Otherwise the lease runs out by itself ``lease_seconds`` after the last batch.
        """
        if not self.projection.in_memory:
            self._lease_until = 0.0
            self._let_go()
            await self._checkpoints.release(self.projection.name, self.owner)

    async def reset(self, *, wait: float = 0.0, replay_effects: bool = False) -> None:
        """Tear the read model down and forget the checkpoint (the next run replays all).

        An external projection's handler has effects outside the database
        (mail, HTTP, commands): a reset would run them again for every past
        event, so it is refused (InvalidRequest) unless ``replay_effects=True``.
        While this runner then replays what it had handled before the reset,
        handlers see ``ctx.replaying`` True (and can skip an effect).

        A reset never pulls the read model from under a live runner: it first
        takes the projection's lease, waiting up to ``wait`` seconds for the
        holder to let it go, else raises :class:`LeaseHeld` naming the holder.
        The teardown, the checkpoint back at 0 and the projection's dead
        letters cleared commit in one transaction, under the lease (a runner
        that held it before can no longer write), which is then released.
        """
        projection = self.projection
        check_bool("replay_effects", replay_effects)
        if projection.external and not replay_effects:
            raise InvalidRequest(
                f"projection {projection.name!r} is external: a reset would run its "
                "effects again for every past event; pass replay_effects=True if that is "
                "what you want (ctx.replaying marks them), or add a projection that starts "
                'from "now"'
            )
        previous = await self.get_position()  # what a replay hands its handler again
        if projection.in_memory:
            self._replay_until = max(self._replay_until, previous)
            self._memory_position = 0
            if projection.teardown is not None:
                await _call(projection.teardown, ProjectionContext(projection, None))
            self._set_up = False
            return
        check_seconds("wait", wait, allow_zero=True)
        await self._take_lease(wait)
        self._let_go()  # the read model goes: no wait may trust the old position
        try:
            async with self._checkpoints.transaction() as tx:
                if projection.teardown is not None:
                    await _call(projection.teardown, ProjectionContext(projection, tx))
                if not await self._checkpoints.reset(tx, projection.name, self.owner):
                    raise self._lease_lost()
            self._replay_until = max(self._replay_until, previous)
        finally:
            self._position = None
            self._set_up = False
            await self.release()

    async def _take_lease(self, wait: float) -> None:
        """Hold the lease (for an operation on the read model), or raise LeaseHeld."""
        name = self.projection.name
        deadline = time.monotonic() + wait
        while not await self._checkpoints.acquire(name, self.owner, self.lease_seconds):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                holder = await self._checkpoints.get(name)
                owner = holder.owner if holder is not None and holder.owner else "another runner"
                expires = us_to_datetime(holder.lease_expires_us if holder is not None else 0)
                raise LeaseHeld(name, owner, expires)
            await AsyncClock.sleep(min(remaining, self.poll_interval, 0.1))  # the lease, polled

    async def rebuild(self, *, replay_effects: bool = False) -> int:
        """Tear the read model down, forget the checkpoint, replay from position 0.

        Returns the number of events handled. (For a rebuild without downtime,
        declare a second projection with a new name and new tables, let it catch
        up beside the live one, then switch readers to it.)
        """
        await self.reset(replay_effects=replay_effects)
        return await self.run_once()

    async def catch_up(self, progress: Callable[[Progress], None] | None = None) -> int:
        """Like :meth:`run_once`, reporting ``Progress`` (done, left, ETA) after each batch.

        ``progress`` is a plain function, called after each page.
        """
        if progress is None:
            return await self.run_once()
        done = 0
        name = self.projection.name
        last_left = [0]

        async def report(count: int, seconds: float) -> None:
            nonlocal done
            done += count
            left, _ = await self._checkpoints.backlog(await self.get_position())
            last_left[0] = left
            rate = count / max(seconds, 1e-9)
            progress(Progress(name, done, left, left / rate if rate else 0.0))

        handled = await self._run_pages(report)
        if last_left[0]:
            # The run ended by moving over events this projection skips, after the
            # last page was reported: say what is really left now.
            left, _ = await self._checkpoints.backlog(await self.get_position())
            progress(Progress(name, done, left, 0.0))
        return handled

    async def status(self) -> ProjectionStatus:
        """Position, lag, throughput and errors of this projection."""
        if self.projection.in_memory:
            position = self._memory_position
        else:
            # The stored checkpoint, whoever moved it (a standby runner's is old).
            position = self._position = await self._stored_position()
        busy = self._busy_since
        return await async_status_of(
            self._checkpoints,
            self.projection.name,
            position,
            events_per_second=self._rate.per_second,
            last_error=self._last_error,
            running=self._running,
            standby=self._standby,
            busy_seconds=time.monotonic() - busy if busy is not None else 0.0,
            restarts=self._restarts,
        )

    async def dead_letters(self) -> list[DeadLetter]:
        """The events this projection skipped, with their errors."""
        return await self._checkpoints.dead_letters(self.projection.name)

    # -- internals ------------------------------------------------------------------------

    async def _setup(self) -> None:
        if self._set_up:
            return
        projection = self.projection
        if projection.setup is not None:
            async with self._checkpoints.transaction() as tx:
                await _call(projection.setup, ProjectionContext(projection, tx))
        self._set_up = True

    async def _handle_page(self, page: list[RecordedEvent]) -> int:
        """Handle ``page``; return how many of its events were handled (fewer if stopped)."""
        projection = self.projection
        if projection.in_memory:
            first = {
                "eventfold.projection": projection.name,
                "eventfold.position": page[0].position,
                "messaging.batch.message_count": len(page),
            }
            with telemetry.batch("eventfold.projection.batch", first, projection.name, links=page):
                await self._handle_in_memory(page)
            telemetry.lag(projection.name, page[-1].recorded_at)
            return len(page)
        stop = self._stop
        if projection.external or not self._checkpoints.transactional:
            # Effects that cannot be rolled back: handle and checkpoint one by one.
            for index, event in enumerate(page):
                if index and stop.is_set():
                    return index
                await self._handle_alone(event)
            return len(page)
        done = 0
        while done < len(page):
            if done and stop.is_set():
                return done
            rest = page[done:]
            try:
                done += await self._commit(rest)
            except (ProjectionStopped, LeaseLost, ConfigurationError):
                raise
            except StoreError as exc:
                if exc.retryable:
                    # The outcome of the commit may be unknown (its answer was lost):
                    # re-read the checkpoint before handling anything again.
                    raise
                await self._handle_alone_each(rest)
                return len(page)
            except Exception:
                # The transaction rolled back as a whole: redo it event by event so
                # that exactly the failing one meets the error policy.
                await self._handle_alone_each(rest)
                return len(page)
        return done

    async def _handle_alone_each(self, events: list[RecordedEvent]) -> None:
        for event in events:
            await self._handle_alone(event)

    async def _commit(self, events: list[RecordedEvent]) -> int:
        """Handle a prefix of ``events`` in one transaction; return its length.

        The transaction ends after ``max_batch_seconds`` of handling (at least
        one event): other writers of the database wait at most that long.
        """
        name = self.projection.name
        first = {"eventfold.projection": name, "eventfold.position": events[0].position}
        with telemetry.batch("eventfold.projection.batch", first, name, links=events) as current:
            count = await self._commit_in(events)
            telemetry.set_attributes(current, {"messaging.batch.message_count": count})
        self._moved(events[count - 1].position)
        self._last_error = None
        telemetry.lag(name, events[count - 1].recorded_at)
        return count

    async def _commit_in(self, events: list[RecordedEvent]) -> int:
        """The transaction of :meth:`_commit`: how many of ``events`` it handled."""
        projection = self.projection
        checkpoints = self._checkpoints
        limit = time.monotonic() + self.max_batch_seconds
        clock, stop = time.monotonic, self._stop
        count = 0
        async with checkpoints.transaction() as tx:
            owned = checkpoints.transactional or await checkpoints.owns(projection.name, self.owner)
            if not owned:
                # Effects here cannot be rolled back: check the lease before them.
                raise self._lease_lost()
            ctx = ProjectionContext(projection, tx)
            handle, replay_until = projection.handle, self._replay_until
            for event in events:
                if type(event.data) is Undecodable:
                    event = await self._decoded(event)  # noqa: PLW2901 - or raises
                if replay_until:
                    ctx.replaying = event.position <= replay_until
                result = handle(ctx, event)
                if result is not None:
                    await _settle(result)
                count += 1
                if clock() > limit or stop.is_set():
                    break
            await self._advance(tx, events[count - 1].position)
        return count

    async def _skip_to(self, head: int) -> None:
        """Move the checkpoint over events up to ``head`` that this projection skips."""
        if head <= await self.get_position():
            return
        if self.projection.in_memory:
            self._memory_position = head
            return
        async with self._checkpoints.transaction() as tx:
            await self._advance(tx, head)
        self._moved(head)

    async def _advance(self, tx: AsyncTransaction, position: int) -> None:
        """Move the stored checkpoint in transaction ``tx``, if the lease is still ours."""
        checkpoints = self._checkpoints
        renewed = time.monotonic() + self.lease_seconds  # counted from before the renewal
        if not await checkpoints.advance(
            tx, self.projection.name, position, self.owner, self.lease_seconds
        ):
            raise self._lease_lost()
        # The lease's new end once ``tx`` commits. Believed a little early if it
        # rolls back: the advances stay fenced by the owner, and an idle runner
        # takes the lease again once half of it is gone.
        self._lease_until = renewed

    def _holds_lease(self) -> bool:
        """Whether this runner surely still holds its lease, for half of it at least.

        Taking it again (a write transaction) is then skipped: every batch's
        advance is fenced by the lease anyway and renews it.
        """
        return self._lease_until - time.monotonic() > self.lease_seconds / 2

    def _moved(self, position: int) -> None:
        """The stored checkpoint is at ``position``, committed: tell this process's waits."""
        self._position = position
        if self._local is not None:
            self._local.moved(self.projection.name, self.owner, position, self._lease_until)

    def _let_go(self) -> None:
        """This runner may not hold the lease: waits look in the database again."""
        if self._local is not None:
            self._local.let_go(self.projection.name, self.owner)

    def _lease_lost(self) -> LeaseLost:
        self._lease_until = 0.0
        self._let_go()
        return LeaseLost(f"projection {self.projection.name!r}: another runner took over")

    async def _handle_in_memory(self, page: list[RecordedEvent]) -> None:
        # The fast path: one loop, no per-event bookkeeping. The position is
        # only remembered after the page, or up to a failing event, which then
        # meets the error policy with one attempt already spent.
        projection = self.projection
        handle = projection.handle
        ctx = ProjectionContext(projection, None)
        replay_until = self._replay_until
        start = 0
        while start < len(page):
            index = start
            try:
                for index in range(start, len(page)):
                    event = page[index]
                    if type(event.data) is Undecodable:
                        event = await self._decoded(event)  # or raises for the policy
                    if replay_until:
                        ctx.replaying = event.position <= replay_until
                    result = handle(ctx, event)
                    if result is not None:
                        await _settle(result)
            except ConfigurationError:
                raise  # a misconfigured handler: no policy applies
            except Exception as exc:
                if index > start:
                    self._memory_position = page[index - 1].position
                await self._handle_alone(page[index], first_error=exc)
                start = index + 1
                continue
            self._memory_position = page[-1].position
            self._last_error = None
            return

    async def _handle_alone(
        self, event: RecordedEvent, first_error: Exception | None = None
    ) -> None:
        projection = self.projection
        policy = projection.on_error
        delay = policy.backoff
        error = first_error
        if error is not None:
            self._note_error(event, error)
        for attempt in range(1 if error is not None else 0, policy.retries + 1):
            if attempt > 0:
                await AsyncClock.sleep(delay)  # back-off before the retry
                delay *= 2
            try:
                if projection.in_memory:
                    await _call(projection.handle, self._context(event), await self._decoded(event))
                    self._memory_position = event.position
                    self._last_error = None
                elif projection.external:
                    await self._handle_external(event)
                else:
                    await self._commit([event])
                return
            except (LeaseLost, ConfigurationError):
                raise  # not the event's fault: no policy applies
            except Exception as exc:
                error = exc
                self._note_error(event, exc)
        if error is None:  # unreachable: every attempt either returned or failed
            return
        if policy.then == "stop":
            raise ProjectionStopped(projection.name, event, error) from error
        await self._skip(event, error)

    def _context(self, event: RecordedEvent) -> ProjectionContext:
        """The context of an event handled on its own, outside a transaction."""
        replaying = event.position <= self._replay_until
        return ProjectionContext(self.projection, None, replaying=replaying)

    async def _decoded(self, event: RecordedEvent) -> RecordedEvent:
        """``event`` decoded, if it was read undecodable; else raise why it cannot be.

        Decoding is tried again each time (a retry after an upcaster was
        registered succeeds), so a decode error meets the error policy like a
        handler's exception: retried, skipped to the dead letters, or stopping
        the projection with the status saying why.
        """
        data = event.data
        if type(data) is not Undecodable:
            return event
        decoded = data.decode_again(self.store.serializer)
        if decoded is not None:
            return decoded
        # A store that gave no row: read the event again through its public API.
        async for again in self.store.read(event.stream, from_version=event.version, limit=1):
            if again.position == event.position:
                return again
        raise data.error

    def _note_error(self, event: RecordedEvent, error: Exception) -> None:
        self._last_error = f"{type(error).__name__}: {error} (position {event.position})"
        logger.warning(
            "projection %s: %s in %r v%d: %s",
            self.projection.name,
            event.type,
            event.stream,
            event.version,
            self._last_error,
            extra=fields(projection=self.projection.name, event=event),
        )

    async def _handle_external(self, event: RecordedEvent) -> None:
        # Effects outside the database cannot share its transaction: run the
        # handler first, then record the progress (at-least-once delivery).
        projection, checkpoints = self.projection, self._checkpoints
        if not await checkpoints.owns(projection.name, self.owner):
            raise self._lease_lost()
        attributes = {
            "eventfold.projection": projection.name,
            "eventfold.stream": event.stream,
            "eventfold.version": event.version,
            "eventfold.position": event.position,
            "eventfold.event.type": event.type,
        }
        with telemetry.batch(
            "eventfold.process", attributes, projection.name, parent=event.metadata, kind="consumer"
        ):
            await _call(projection.handle, self._context(event), await self._decoded(event))
        telemetry.lag(projection.name, event.recorded_at)
        async with checkpoints.transaction() as tx:
            await self._advance(tx, event.position)
        self._moved(event.position)
        self._last_error = None

    async def _skip(self, event: RecordedEvent, error: BaseException) -> None:
        projection = self.projection
        telemetry.record(
            "eventfold.projection.dead_letters", 1, {"eventfold.projection": projection.name}
        )
        async with self._checkpoints.transaction() as tx:
            await self._checkpoints.dead_letter(
                tx, projection.name, event, f"{type(error).__name__}: {error}"
            )
            if projection.in_memory:
                self._memory_position = event.position
            else:
                await self._advance(tx, event.position)
                self._position = event.position
        if not projection.in_memory:
            self._moved(event.position)
