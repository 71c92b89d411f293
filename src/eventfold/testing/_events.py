"""Event types used by the conformance suite (names prefixed to avoid clashes)."""

from __future__ import annotations

from dataclasses import dataclass

from eventfold.decider import Decider
from eventfold.events import Event

__all__ = [
    "Deposited",
    "Greet",
    "Greeted",
    "Measured",
    "Opened",
    "Received",
    "Unserialisable",
    "Withdrawn",
    "welcome",
]


class Opened(Event, frozen=True):
    """A test account was opened."""

    __event_type__ = "eventfold.testing.Opened"
    owner: str


class Deposited(Event, frozen=True):
    """Money went in."""

    __event_type__ = "eventfold.testing.Deposited"
    amount: int


class Withdrawn(Event, frozen=True):
    """Money went out."""

    __event_type__ = "eventfold.testing.Withdrawn"
    amount: int


class Unserialisable(Event, frozen=True):
    """Holds any object: encoding fails when it is not JSON-compatible."""

    __event_type__ = "eventfold.testing.Unserialisable"
    payload: object


class Received(Event, frozen=True):
    """Goods arrived (an int field: a float such as 2.5 must be refused)."""

    __event_type__ = "eventfold.testing.Received"
    quantity: int


class Measured(Event, frozen=True):
    """A reading (float fields: NaN and infinities must be refused)."""

    __event_type__ = "eventfold.testing.Measured"
    value: float
    previous: float | None = None


class Greeted(Event, frozen=True):
    """A welcome was sent to the owner of an account."""

    __event_type__ = "eventfold.testing.Greeted"
    owner: str


@dataclass(frozen=True)
class Greet:
    """Send the welcome (once per account: a second one is refused)."""

    owner: str


def _decide(command: Greet, greeted: bool) -> list[Greeted]:
    if greeted:
        raise ValueError("already greeted")
    return [Greeted(owner=command.owner)]


def _evolve(greeted: bool, event: object) -> bool:
    return greeted or isinstance(event, Greeted)


welcome: Decider[bool, Greet, Greeted] = Decider(_decide, _evolve, bool)
