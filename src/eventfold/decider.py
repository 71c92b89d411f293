"""The functional aggregate: a decider is three pure functions.

``decide(command, state) -> Sequence[event]`` validates a command against the
current state and returns the events it causes (empty: nothing changes) or
raises the user's own exception to reject it. ``evolve(state, event) -> state``
applies one event. ``initial_state()`` makes the state of a stream with no
events. State is rebuilt by folding a stream's events with ``evolve``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec

__all__ = ["Decider", "Loaded"]

S = TypeVar("S")
C = TypeVar("C")
E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class Decider(Generic[S, C, E]):
    """``Decider(decide, evolve, initial_state)``; ``initial_state`` is a factory.

    A factory (a class or a zero-argument function) rather than a value, so
    that a mutable state is never shared between two loads.
    """

    decide: Callable[[C, S], Sequence[E]]
    evolve: Callable[[S, E], S]
    initial_state: Callable[[], S]

    def fold(self, events: Iterable[E], state: S | None = None) -> S:
        """Apply ``events`` to ``state`` (default: a fresh initial state)."""
        current = self.initial_state() if state is None else state
        evolve = self.evolve
        for event in events:
            current = evolve(current, event)
        return current

    def after_decision(self, state: S, events: Sequence[E]) -> S:
        """The state once ``events`` returned by ``decide`` are applied to ``state``."""
        return self.fold(events, state)


class Loaded(msgspec.Struct, Generic[S], frozen=True):
    """A stream's state rebuilt from its events, and the version it reflects."""

    state: S
    version: int
