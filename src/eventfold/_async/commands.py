"""Command handling: load -> rebuild state -> decide -> append -> retry on conflict.

This module is the async source of ``eventfold._sync.commands``.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Generic, TypeVar, cast, overload

from eventfold._command_types import (
    IDEMPOTENCY_KEY,
    CommandResult,
    HistoryEntry,
    Loaded,
    idempotent_event_id,
)
from eventfold._runner import AsyncClock
from eventfold.aggregate import Aggregate
from eventfold.decider import Decider
from eventfold.errors import InvalidRequest, WrongExpectedVersion
from eventfold.events import NewEvent, uuid7
from eventfold.store import AsyncEventStore
from eventfold.store._common import check_non_negative

__all__ = ["AsyncCommandHandler"]

S = TypeVar("S")
C = TypeVar("C")
A = TypeVar("A", bound=Aggregate)


class AsyncCommandHandler(Generic[S, C]):
    """Runs commands against streams of a store.

    ``AsyncCommandHandler(store, decider)`` or, for class-style aggregates,
    ``AsyncCommandHandler(store, BankAccount)`` (commands are then callables
    taking the aggregate). On WrongExpectedVersion the command is re-run
    against the reloaded state, up to ``max_retries`` times, after a jittered
    exponential back-off starting at ``retry_delay`` seconds.
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
    ) -> None: ...

    def __init__(
        self,
        store: AsyncEventStore,
        model: Decider[Any, Any, Any] | type[Aggregate],
        *,
        max_retries: int = 5,
        retry_delay: float = 0.002,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(model, type) and issubclass(model, Aggregate):
            self.decider: Decider[Any, Any, Any] = model.decider()
        elif isinstance(model, Decider):
            self.decider = model
        else:
            raise InvalidRequest("model must be a Decider or an Aggregate subclass")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidRequest(f"max_retries must be an int >= 0, not {max_retries!r}")
        if not isinstance(retry_delay, (int, float)) or retry_delay < 0:
            raise InvalidRequest(f"retry_delay must be seconds >= 0, not {retry_delay!r}")
        self.store = store
        self.max_retries = max_retries
        self.retry_delay = float(retry_delay)
        self.metadata = dict(metadata or {})

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
        if as_of_version is None and as_of_time is None:
            state, version, _ = await self._load(stream, None)
            return Loaded(state, version)
        limit = (
            None if as_of_version is None else check_non_negative("as_of_version", as_of_version)
        )
        if as_of_time is not None and (
            not isinstance(as_of_time, datetime) or as_of_time.tzinfo is None
        ):
            raise InvalidRequest("as_of_time must be a timezone-aware datetime")
        evolve = self.decider.evolve
        state = self.decider.initial_state()
        version = 0
        async for recorded in self.store.read(stream, limit=limit):
            if as_of_time is not None and recorded.recorded_at > as_of_time:
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
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> CommandResult[S]:
        """Decide ``command`` against the current state of ``stream`` and append the result.

        A command rejected by ``decide`` (the user's exception) writes nothing
        and the exception propagates unchanged. With ``idempotency_key``, a
        command already handled (even by another process, long ago) is not
        run again: its original events are returned with ``replayed=True``.
        """
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not idempotency_key
        ):
            raise InvalidRequest("idempotency_key must be a non-empty str")
        event_metadata = {**self.metadata, **(metadata or {})}
        if idempotency_key is not None:
            event_metadata[IDEMPOTENCY_KEY] = idempotency_key
        decider = self.decider
        attempt = 0
        while True:
            state, version, replay = await self._load(stream, idempotency_key)
            if replay is not None:
                return CommandResult(state, tuple(replay[0]), replay[1], replay[2], True)
            events = decider.decide(command, state)
            if not events:
                return CommandResult(state, (), version)
            batch = [
                NewEvent(
                    data=event,
                    id=uuid7()
                    if idempotency_key is None
                    else idempotent_event_id(stream, idempotency_key, index),
                    metadata=event_metadata,
                )
                for index, event in enumerate(events)
            ]
            try:
                result = await self.store.append(stream, batch, expected=version)
            except WrongExpectedVersion:
                if attempt >= self.max_retries:
                    raise
                await AsyncClock.sleep(random.uniform(0, self.retry_delay * 2**attempt))
                attempt += 1
                continue
            state = decider.after_decision(state, events)
            return CommandResult(state, tuple(events), result.to_version, result.position)

    async def _load(
        self, stream: str, key: str | None
    ) -> tuple[Any, int, tuple[list[Any], int, int] | None]:
        decider = self.decider
        evolve = decider.evolve
        state = decider.initial_state()
        version = 0
        replayed: list[Any] = []
        replay_version = replay_position = 0
        async for recorded in self.store.read(stream):
            state = evolve(state, recorded.data)
            version = recorded.version
            if key is not None and recorded.metadata.get(IDEMPOTENCY_KEY) == key:
                replayed.append(recorded.data)
                replay_version, replay_position = recorded.version, recorded.position
        if replayed:
            return state, version, (replayed, replay_version, replay_position)
        return state, version, None
