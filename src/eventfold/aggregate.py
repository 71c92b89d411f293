"""Class-style aggregates: command methods ``record`` events, ``apply`` mutates state.

This is the hand-written ``BankAccount`` style::

    class BankAccount(Aggregate):
        def __init__(self) -> None:
            self.balance = 0

        def withdraw(self, amount: int) -> None:      # a command method
            if amount > self.balance:
                raise InsufficientFunds(self.balance, amount)
            self.record(MoneyWithdrawn(amount=amount))

        def apply(self, event: object) -> None:        # the "when" part
            match event:
                case MoneyWithdrawn(amount=amount):
                    self.balance -= amount

A command for a class-style aggregate is any callable taking the aggregate,
e.g. ``lambda account: account.withdraw(30)``. No metaclass is involved:
event classes are written by hand and stay the stable contract.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Self

from eventfold.decider import Decider
from eventfold.errors import InvalidRequest

__all__ = ["Aggregate", "decider_of"]

#: Attributes that are the handler's bookkeeping, not the aggregate's state:
#: never snapshotted (the events recorded by a command not yet stored).
PENDING_EVENTS = "_pending_events"
TRANSIENT_ATTRIBUTES = frozenset({PENDING_EVENTS})


class Aggregate:
    """Base class of class-style aggregates. Override :meth:`apply`.

    ``version`` counts the events applied (loaded and recorded), so after a
    successful command it equals the stream's version. Subclasses need not
    call ``super().__init__()``.

    With a :class:`~eventfold.snapshots.SnapshotPolicy` the whole instance
    state is snapshotted (every attribute, private ones and ``__slots__``
    included): each must be a JSON value that decodes back to the same value
    (str, int, float, bool, None, lists and str-keyed dicts of those), or
    the aggregate is simply not snapshotted. See ``docs/snapshots.md``.
    """

    version: int = 0

    def apply(self, event: Any) -> None:
        """Change state for ``event``; called on load and by :meth:`record`."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement apply(event)")

    def record(self, event: object) -> None:
        """Apply a new event now and keep it to be appended by the command handler."""
        self.apply(event)
        self.version += 1
        pending: list[object] = self.__dict__.setdefault(PENDING_EVENTS, [])
        pending.append(event)

    @property
    def pending_events(self) -> Sequence[object]:
        """Events recorded since the aggregate was loaded and not yet stored."""
        return tuple(self.__dict__.get(PENDING_EVENTS, ()))

    def _take_pending(self) -> list[object]:
        pending: list[object] = self.__dict__.pop(PENDING_EVENTS, [])
        return pending

    def _replay(self, event: object) -> Self:
        self.apply(event)
        self.version += 1
        return self

    @classmethod
    def decider(cls) -> Decider[Self, Callable[[Self], object], object]:
        """This aggregate class as a :class:`Decider` (used by the command handler)."""
        return _AggregateDecider(_run_command, cls._replay, cls)


def _run_command(command: Callable[[Any], object], aggregate: Any) -> Sequence[object]:
    command(aggregate)
    events: list[object] = aggregate._take_pending()
    return events


class _AggregateDecider(Decider[Any, Any, Any]):
    # record() already applied the events to the aggregate during decide.
    __slots__ = ()

    def after_decision(self, state: Any, events: Sequence[Any]) -> Any:
        return state


def decider_of(model: object) -> Decider[Any, Any, Any]:
    """The Decider of ``model``: a Decider itself, or an Aggregate subclass's.

    The one place where a model given to a command handler or a test helper
    is understood; anything else is an InvalidRequest.
    """
    if isinstance(model, Decider):
        return model
    if isinstance(model, type) and issubclass(model, Aggregate):
        return model.decider()
    raise InvalidRequest(f"model must be a Decider or an Aggregate subclass, not {model!r}")
