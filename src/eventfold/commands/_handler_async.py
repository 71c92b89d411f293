"""Command handling: load -> rebuild state -> decide -> append -> retry on conflict."""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar, cast, overload

from eventfold import telemetry
from eventfold._acompat import AsyncClock
from eventfold._checks import check_non_negative, check_seconds
from eventfold._logs import fields
from eventfold.aggregate import Aggregate, decider_of
from eventfold.bus import EventBus
from eventfold.commands._types import (
    COMMAND_DIGEST,
    IDEMPOTENCY_KEY,
    CommandResult,
    HistoryEntry,
    Loaded,
    check_command_digest,
    idempotent_event_id,
    keyed_digest,
)
from eventfold.decider import Decider
from eventfold.errors import EventfoldError, InvalidRequest, WrongExpectedVersion
from eventfold.events import NewEvent, uuid7
from eventfold.snapshots import SnapshotPolicy
from eventfold.store import AppendResult, AsyncEventStore, AsyncTransaction

__all__ = ["AsyncCommandHandler"]

S = TypeVar("S")
C = TypeVar("C")
logger = logging.getLogger("eventfold.commands")
A = TypeVar("A", bound=Aggregate)


class AsyncCommandHandler(Generic[S, C]):
    """Runs commands against streams of a store.

    ``AsyncCommandHandler(store, decider)`` or, for class-style aggregates,
    ``AsyncCommandHandler(store, BankAccount)`` (commands are then callables
    taking the aggregate). On WrongExpectedVersion the command is re-run
    against the reloaded state, up to ``max_retries`` times, after a jittered
    exponential back-off starting at ``retry_delay`` seconds. With
    ``snapshots=SnapshotPolicy(every=100)`` states are loaded from the newest
    snapshot plus the events after it, and saved after appends that cross the
    policy's threshold (a failed snapshot write is logged, never raised).
    With ``bus=EventBus()`` the recorded events of each successful command are
    published in process, after the append has committed.
    """

    @overload
    def __init__(
        self: AsyncCommandHandler[A, Callable[[A], object]],
        store: AsyncEventStore,
        model: type[A],
        *,
        max_retries: int = ...,
        retry_delay: float = ...,
        metadata: Mapping[str, Any] | None = ...,
        snapshots: SnapshotPolicy[Any] | None = ...,
        bus: EventBus | None = ...,
    ) -> None: ...

    @overload
    def __init__(
        self,
        store: AsyncEventStore,
        model: Decider[S, C, Any],
        *,
        max_retries: int = ...,
        retry_delay: float = ...,
        metadata: Mapping[str, Any] | None = ...,
        snapshots: SnapshotPolicy[Any] | None = ...,
        bus: EventBus | None = ...,
    ) -> None: ...

    def __init__(
        self,
        store: AsyncEventStore,
        model: Decider[Any, Any, Any] | type[Aggregate],
        *,
        max_retries: int = 5,
        retry_delay: float = 0.002,
        metadata: Mapping[str, Any] | None = None,
        snapshots: SnapshotPolicy[Any] | None = None,
        bus: EventBus | None = None,
    ) -> None:
        self.decider: Decider[Any, Any, Any] = decider_of(model)
        check_non_negative("max_retries", max_retries)
        check_seconds("retry_delay", retry_delay, allow_zero=True)
        self.store = store
        self.max_retries = max_retries
        self.retry_delay = float(retry_delay)
        self.metadata = dict(metadata or {})
        self.snapshots = snapshots
        self.bus = bus
        if snapshots is not None:
            snapshots.bind(self.decider.initial_state)

    async def load(
        self,
        stream: str,
        *,
        as_of_version: int | None = None,
        as_of_time: datetime | None = None,
    ) -> Loaded[S]:
        """Rebuild the state of ``stream`` from its events.

        Time travel: ``as_of_version`` gives the state right after that
        version (0: the initial state); ``as_of_time`` the state from the
        events recorded at or before that instant (an aware datetime). Both
        together apply both bounds.
        """
        if as_of_version is not None:
            check_non_negative("as_of_version", as_of_version)
        if as_of_time is None:
            state, version = await self._load(stream, as_of_version)
            return Loaded(state, version)
        if not isinstance(as_of_time, datetime) or as_of_time.tzinfo is None:
            raise InvalidRequest("as_of_time must be a timezone-aware datetime")
        # Snapshots are not indexed by time: fold from the start.
        evolve = self.decider.evolve
        state = self.decider.initial_state()
        version = 0
        async for recorded in self.store.read(stream, limit=as_of_version):
            if recorded.recorded_at > as_of_time:
                break
            state = evolve(state, recorded.data)
            version = recorded.version
        return Loaded(state, version)

    async def history(self, stream: str) -> list[HistoryEntry[S]]:
        """Every event of ``stream`` with the state right after it (for audits and UIs).

        States of class-style aggregates are copied per step, since the
        aggregate itself is mutated by each event.
        """
        evolve = self.decider.evolve
        state = self.decider.initial_state()
        entries: list[HistoryEntry[S]] = []
        async for recorded in self.store.read(stream):
            state = evolve(state, recorded.data)
            # A class-style aggregate is mutated in place by the next event: copy it.
            step = copy.deepcopy(state) if isinstance(state, Aggregate) else state
            entries.append(HistoryEntry(recorded, cast(S, step)))
        return entries

    async def handle(
        self,
        stream: str,
        command: C,
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        command_digest: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        transaction: AsyncTransaction | None = None,
    ) -> CommandResult[S]:
        """Decide ``command`` against the current state of ``stream`` and append the result.

        A command rejected by ``decide`` (the user's exception) writes nothing
        and the exception propagates unchanged.

        ``expected_version`` makes the command conditional (an HTTP
        ``If-Match``): it is decided only if the stream is at that version
        (0: it does not exist yet), else WrongExpectedVersion is raised,
        nothing is written and nothing retried. A decision of no events
        writes nothing and returns the stream's (expected) version.

        ``idempotency_key`` (scoped to ``stream``): a command already handled
        with that key on this stream (even by another process, long ago) is
        not run again; its original events are returned with
        ``replayed=True``, also when the stream has moved past
        ``expected_version`` since (a retried request gets its first answer).
        The key is stored with a digest of the command (see
        :func:`eventfold.commands.command_digest`); the same key with a
        different command raises IdempotencyKeyReused. Callables have no
        digest: pass ``command_digest`` (any stable fingerprint, e.g. of the
        request body) to have them checked too.

        ``transaction`` (from ``store.transaction()``, also on your own
        connection): the events are appended in it, so they commit or roll
        back with your other writes there. The state is loaded from what is
        committed, so handle at most one command per stream in one
        transaction. As the handler cannot know whether the transaction will
        commit, it then writes no snapshot and publishes nothing on its bus.
        """
        command_type = type(command).__qualname__
        attributes = {"eventfold.stream": stream, "eventfold.command.type": command_type}
        with telemetry.span("eventfold.handle", attributes) as current:  # None when off
            result = await self._handle(
                stream,
                command,
                expected_version,
                idempotency_key,
                command_digest,
                metadata,
                transaction,
                current,
            )
            if current is not None:
                done = {
                    "eventfold.version": result.version,
                    "eventfold.position": result.position,
                    "eventfold.events": len(result.events),
                    "eventfold.replayed": result.replayed,
                }
                telemetry.set_attributes(current, done)
            return result

    async def _handle(
        self,
        stream: str,
        command: C,
        expected_version: int | None,
        idempotency_key: str | None,
        command_digest: str | None,
        metadata: Mapping[str, Any] | None,
        transaction: AsyncTransaction | None,
        current: Any,
    ) -> CommandResult[S]:
        if expected_version is not None:
            check_non_negative("expected_version", expected_version)
        digest = keyed_digest(command, idempotency_key, command_digest)
        event_metadata = {**self.metadata, **(metadata or {})}
        telemetry.inject(event_metadata)  # the command's trace goes on with its events
        if idempotency_key is not None:
            event_metadata[IDEMPOTENCY_KEY] = idempotency_key
            if digest is not None:
                event_metadata[COMMAND_DIGEST] = digest
        decider = self.decider
        attempt = 0
        stale = False
        while True:
            with telemetry.span("eventfold.load", {"eventfold.stream": stream}):
                state, version = await self._load(stream, None)
            if idempotency_key is not None:
                replay = await self._replay(stream, idempotency_key, digest)
                if replay is not None:
                    events_then, version_then, position_then = replay
                    return CommandResult(state, events_then, version_then, position_then, True)
            if expected_version is not None and (stale or version != expected_version):
                raise WrongExpectedVersion(stream, expected_version, version)
            with telemetry.span("eventfold.decide", {"eventfold.stream": stream}):
                events = decider.decide(command, state)
            if not events:
                return CommandResult(state, (), version)
            batch = _batch(stream, events, idempotency_key, event_metadata)
            try:
                if transaction is None:
                    result = await self.store.append(stream, batch, expected=version)
                else:
                    result = await transaction.append(stream, batch, expected=version)
            except WrongExpectedVersion:
                if expected_version is not None:
                    if idempotency_key is None:
                        raise
                    # No retry; but a racing delivery of this very command may have
                    # won: the next pass returns its answer, or raises.
                    stale = True
                    continue
                if attempt >= self.max_retries:
                    raise
                await AsyncClock.sleep(random.uniform(0, self.retry_delay * 2**attempt))
                attempt += 1
                retried = {"eventfold.stream": stream, "eventfold.attempt": attempt}
                telemetry.add_event(current, "eventfold.retry", retried)
                telemetry.record("eventfold.command.retries", 1, {"eventfold.stream": stream})
                continue
            if idempotency_key is not None and digest is not None:
                await self._check_stored_digest(stream, idempotency_key, digest, batch[0])
            state = decider.after_decision(state, events)
            if transaction is None:
                await self._after_commit(stream, state, result, len(events))
            return CommandResult(state, tuple(events), result.to_version, result.position)

    async def _after_commit(
        self, stream: str, state: Any, result: AppendResult, count: int
    ) -> None:
        """Snapshot and publish what a command appended (the append has committed)."""
        policy = self.snapshots
        if policy is not None and policy.is_due(state, result.from_version, result.to_version):
            await self._save_snapshot(stream, result.to_version, state)
        if self.bus is not None:
            recorded = [
                e
                async for e in self.store.read(
                    stream, from_version=result.from_version, limit=count
                )
            ]
            self.bus.publish(recorded)

    async def _check_stored_digest(
        self, stream: str, key: str, digest: str, first: NewEvent
    ) -> None:
        # A racing delivery with the same key may have stored its events between our
        # replay check and our append; the store then returned its result for our
        # (same-id) batch. If that was a different command, ours did not run: say so.
        stored = await self.store.find_event(first.id)
        if stored is not None:
            check_command_digest(stream, key, stored.metadata.get(COMMAND_DIGEST), digest)

    async def rebuild_snapshot(self, stream: str) -> int:
        """Fold ``stream`` from its first event and save a fresh snapshot; return its version.

        The maintenance step after a state class changed (with
        ``SnapshotPolicy.prune`` to delete the stale ones). Returns 0 when the
        stream is empty or its state cannot be snapshotted.
        """
        policy = self.snapshots
        if policy is None:
            raise InvalidRequest("this handler has no snapshot policy")
        state, version = await self._load(stream, None, use_snapshot=False)
        if version == 0 or not await self._save_snapshot(stream, version, state):
            return 0
        return version

    async def prune_snapshots(self) -> int:
        """Delete this policy's snapshots written for another schema version; return how many."""
        policy = self.snapshots
        if policy is None or policy.state_type is None:
            raise InvalidRequest("this handler has no snapshot policy")
        return await self.store.delete_snapshots(
            state_type=policy.state_type, keep_schema_version=policy.schema_version
        )

    async def _load(
        self, stream: str, upto: int | None, *, use_snapshot: bool = True
    ) -> tuple[Any, int]:
        decider = self.decider
        evolve = decider.evolve
        version = 0
        policy = self.snapshots
        restored: Loaded[Any] | None = None
        if policy is not None and use_snapshot:
            snapshot = await self.store.load_snapshot(stream, max_version=upto)
            if snapshot is not None:
                restored = policy.restore(snapshot)
        if restored is not None:
            state, version = restored.state, restored.version
        else:
            state = decider.initial_state()
        limit = None if upto is None else upto - version
        async for recorded in self.store.read(stream, from_version=version + 1, limit=limit):
            state = evolve(state, recorded.data)
            version = recorded.version
        return state, version

    async def _replay(
        self, stream: str, key: str, digest: str | None
    ) -> tuple[tuple[Any, ...], int, int] | None:
        # The first event of a keyed command has an id derived from the key: one
        # indexed lookup finds it however old it is (snapshots skip old events).
        first = await self.store.find_event(idempotent_event_id(stream, key, 0))
        if first is None or first.stream != stream:
            return None
        check_command_digest(stream, key, first.metadata.get(COMMAND_DIGEST), digest)
        events: list[Any] = []
        last = first
        async for recorded in self.store.read(stream, from_version=first.version):
            if recorded.metadata.get(IDEMPOTENCY_KEY) != key:
                break
            events.append(recorded.data)
            last = recorded
        return tuple(events), last.version, last.position

    async def _save_snapshot(self, stream: str, version: int, state: Any) -> bool:
        policy = self.snapshots
        if policy is None or policy.state_type is None:
            return False
        data = policy.encode(state)
        if data is None:
            return False
        try:
            await self.store.save_snapshot(
                stream, version, policy.state_type, policy.schema_version, data
            )
        except EventfoldError as exc:
            # The events are committed; a missing snapshot only costs a longer load.
            logger.warning(
                "snapshot of %s@%s not saved: %s",
                stream,
                version,
                exc,
                extra=fields(stream=stream, version=version),
            )
            return False
        return True


def _batch(
    stream: str, events: Sequence[Any], key: str | None, metadata: dict[str, Any]
) -> list[NewEvent]:
    """The events of one command, with ids derived from its idempotency key if it has one."""
    return [
        NewEvent(
            data=event,
            id=uuid7() if key is None else idempotent_event_id(stream, key, index),
            metadata=metadata,
        )
        for index, event in enumerate(events)
    ]
