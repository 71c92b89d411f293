"""Given/when/then helpers: deciders and aggregates (no store), projections, process managers.

::

    spec = DeciderSpec(account)                       # a Decider
    spec.given(Opened(owner="a"), Deposited(amount=5)) \\
        .when(Withdraw(amount=9)) \\
        .then_raises(InsufficientFunds)

    DeciderSpec(BankAccount).given(...).when(lambda a: a.deposit(5)).then(Deposited(amount=5))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Generic, Self, TypeVar, cast

from eventfold.aggregate import Aggregate, decider_of
from eventfold.decider import Decider
from eventfold.processes import Dispatch, ProcessManager
from eventfold.projections import Projection, ProjectionRunner
from eventfold.store import EventStore
from eventfold.store.memory import MemoryEventStore

__all__ = ["DeciderSpec", "ProcessSpec", "ProjectionSpec"]

S = TypeVar("S")
C = TypeVar("C")
E = TypeVar("E")

_NOTHING = object()


class DeciderSpec(Generic[S, C, E]):
    """Fold ``given`` events, decide ``when`` command, check ``then`` outcome.

    Each ``then*`` method raises AssertionError with a readable message when
    the outcome differs, so it works in pytest and in plain ``unittest``.
    """

    def __init__(self, model: Decider[S, C, E] | type[Aggregate]) -> None:
        self.decider: Decider[Any, Any, Any] = decider_of(model)
        self._given: list[Any] = []
        self._command: object = _NOTHING

    def given(self, *events: E) -> Self:
        """Events already in the stream (none: a new stream)."""
        self._given = list(events)
        return self

    def when(self, command: C) -> Self:
        """The command under test."""
        self._command = command
        return self

    def _decide(self) -> tuple[Any, Sequence[Any]]:
        if self._command is _NOTHING:
            raise AssertionError("call .when(command) before .then...()")
        state = self.decider.fold(self._given)
        events = self.decider.decide(self._command, state)
        return state, events

    def then(self, *expected: E) -> Sequence[E]:
        """Assert the command produces exactly ``expected`` events, in order."""
        _, events = self._decide()
        if list(events) != list(expected):
            raise AssertionError(f"expected events {list(expected)!r}, got {list(events)!r}")
        return events

    def then_nothing(self) -> None:
        """Assert the command is accepted and changes nothing."""
        self.then()

    def then_raises(self, error: type[BaseException], match: str | None = None) -> BaseException:
        """Assert the command is rejected with ``error`` (message matching ``match``)."""
        try:
            _, events = self._decide()
        except error as exc:
            if match is not None and not re.search(match, str(exc)):
                raise AssertionError(f"{exc!r} does not match {match!r}") from exc
            return exc
        raise AssertionError(f"expected {error.__name__}, but the command produced {events!r}")

    def then_state(self, check: Callable[[S], object]) -> S:
        """Assert ``check(state after the command)`` is truthy (or returns None without raising)."""
        state, events = self._decide()
        after = cast(S, self.decider.after_decision(state, events))
        result = check(after)
        if result is not None and not result:
            raise AssertionError(f"state check failed for {after!r}")
        return after


class ProjectionSpec:
    """Append ``given`` events, run the projection, check ``then`` the read model.

    ::

        spec = ProjectionSpec(balances)                    # a memory store
        spec.given("acc-1", Deposited(amount=5), Deposited(amount=7))
        spec.then(lambda: totals == {"acc-1": 12})          # in-memory read model
        ProjectionSpec(sql_balances, store=sqlite_store).given(...).then_rows(
            "SELECT account, balance FROM balances", [("acc-1", 12)]
        )

    One runner handles everything given so far before each check, so a spec
    can go on: more ``given``, another ``then``. Works for SQL read models on
    the store's database (pass a SQLite or PostgreSQL store) and in memory.
    """

    def __init__(self, projection: Projection, store: EventStore | None = None) -> None:
        self.store: EventStore = store if store is not None else MemoryEventStore()
        self.runner = ProjectionRunner(self.store, projection)
        self.handled = 0  # events the runner has handled so far

    def given(self, stream: str, *events: object) -> Self:
        """Append ``events`` (event objects or ``NewEvent``) to ``stream``."""
        self.store.append(stream, list(events))
        return self

    def run(self) -> int:
        """Handle what was given since the last run; how many events that was."""
        count = self.runner.run_once()
        self.handled += count
        status = self.runner.status()
        if status.last_error is not None:
            raise AssertionError(f"projection {status.name!r} failed: {status.last_error}")
        return count

    def then(self, check: Callable[[], object], message: str = "") -> Self:
        """Run, then assert ``check()`` is truthy (or None without raising)."""
        self.run()
        result = check()
        if result is not None and not result:
            raise AssertionError(message or f"read model check failed after {self.handled} events")
        return self

    def then_rows(self, query: str, expected: Sequence[tuple[Any, ...]]) -> Self:
        """Run, then assert ``query`` (``?`` placeholders) returns exactly ``expected`` rows."""
        self.run()
        with self.store.transaction() as tx:
            rows = [tuple(row) for row in tx.execute(query).fetchall()]
        if rows != [tuple(row) for row in expected]:
            raise AssertionError(f"{query!r} returned {rows!r}, expected {list(expected)!r}")
        return self


class ProcessSpec:
    """Events ``given``, then the commands a process manager sends for them.

    ::

        spec = ProcessSpec(shipping)
        spec.given("order-1", OrderPaid(order="o-1"))
        spec.then(("shipment-o-1", Ship(order="o-1")))    # (stream, command) pairs
        spec.given("order-1", OrderCancelled(order="o-1")).then_nothing()

    Only the reaction runs (no command handler): each ``then`` reacts to the
    events given since the previous one that the manager's filters (types,
    stream prefix) let through, and compares what it sends. For
    ``AsyncProcessManager``, await its ``react`` yourself.
    """

    def __init__(self, manager: ProcessManager, store: EventStore | None = None) -> None:
        self.manager = manager
        self.store: EventStore = store if store is not None else MemoryEventStore()
        self._after = self.store.last_position()

    def given(self, stream: str, *events: object) -> Self:
        """Append ``events`` (event objects or ``NewEvent``) to ``stream``."""
        self.store.append(stream, list(events))
        return self

    def dispatches(self) -> list[Dispatch]:
        """React to the events given since the last call: the commands sent, in order."""
        projection = self.manager.projection
        types = list(projection.types) if projection.types is not None else None
        events = list(
            self.store.read_all(
                after=self._after, types=types, stream_prefix=projection.stream_prefix
            )
        )
        self._after = self.store.last_position()
        sent: list[Dispatch] = []
        for event in events:
            sent.extend(self.manager.react(event))
        return sent

    def then(self, *expected: tuple[str, object]) -> list[Dispatch]:
        """Assert the reactions send exactly ``expected`` (stream, command) pairs, in order."""
        sent = self.dispatches()
        got = [(d.stream, d.command) for d in sent]
        if got != list(expected):
            raise AssertionError(f"expected commands {list(expected)!r}, got {got!r}")
        return sent

    def then_nothing(self) -> None:
        """Assert the reactions send no command."""
        self.then()
