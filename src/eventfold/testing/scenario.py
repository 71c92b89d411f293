"""Given/when/then helpers for testing deciders and aggregates without a store.

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

__all__ = ["DeciderSpec"]

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
