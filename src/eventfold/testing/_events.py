"""Event types used by the conformance suite (names prefixed to avoid clashes)."""

from __future__ import annotations

from eventfold.events import Event

__all__ = ["Deposited", "Measured", "Opened", "Received", "Unserialisable", "Withdrawn"]


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
