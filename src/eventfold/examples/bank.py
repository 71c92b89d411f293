"""A bank account, event sourced: copy this file to start your own model.

Amounts are integer cents (never floats for money). The same rules are
written twice, in the two styles eventfold supports:

* a functional decider, ``account = Decider(decide, evolve, AccountState)``,
  used as ``CommandHandler(store, account).handle(stream, DepositMoney(500))``;
* a class-style aggregate, ``BankAccount``, used as
  ``CommandHandler(store, BankAccount).handle(stream, lambda a: a.deposit(500))``.

Both write the same events, so a stream written by one can be loaded by the other.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import assert_never
from uuid import UUID

from eventfold import (
    CAUSATION_ID,
    Aggregate,
    CommandHandler,
    CommandResult,
    Decider,
    Event,
)

# -- events: facts, past tense; the type names are the stored contract ----------------
# ``frozen=True`` repeats Event's own setting so that type checkers see it too.


class AccountOpened(Event, frozen=True):
    """An account was opened for ``owner``."""

    __event_type__ = "bank.AccountOpened"
    owner: str


class MoneyDeposited(Event, frozen=True):
    """``amount`` cents were paid in."""

    __event_type__ = "bank.MoneyDeposited"
    amount: int


class MoneyWithdrawn(Event, frozen=True):
    """``amount`` cents were paid out."""

    __event_type__ = "bank.MoneyWithdrawn"
    amount: int


class DepositReversed(Event, frozen=True):
    """A compensating event: a deposit made in error was taken back.

    The mistaken ``MoneyDeposited`` stays in history (events are facts); the
    reversal's metadata names it (``reverses``: the original event id).
    """

    __event_type__ = "bank.DepositReversed"
    amount: int
    reason: str


BankEvent = AccountOpened | MoneyDeposited | MoneyWithdrawn | DepositReversed

# -- commands: requests, imperative; they may be rejected ---------------------------


@dataclass(frozen=True, slots=True)
class OpenAccount:
    """Open the account, optionally with a first deposit (cents)."""

    owner: str
    initial_deposit: int = 0


@dataclass(frozen=True, slots=True)
class DepositMoney:
    """Pay ``amount`` cents in."""

    amount: int


@dataclass(frozen=True, slots=True)
class WithdrawMoney:
    """Pay ``amount`` cents out, if the balance covers it."""

    amount: int


@dataclass(frozen=True, slots=True)
class ReverseDeposit:
    """Take back a deposit made in error (see :func:`reverse_deposit`)."""

    amount: int
    reason: str


BankCommand = OpenAccount | DepositMoney | WithdrawMoney | ReverseDeposit

# -- business-rule violations: the model's own exceptions -----------------------------


class BankError(Exception):
    """A command broke a rule of the bank; nothing was written."""


class InvalidAmount(BankError):
    """An amount was not a positive number of cents."""

    def __init__(self, amount: int) -> None:
        self.amount = amount
        super().__init__(f"amount must be a positive number of cents, not {amount}")


class AccountNotOpen(BankError):
    """Money was moved on an account that was never opened."""

    def __init__(self) -> None:
        super().__init__("the account is not open")


class AccountAlreadyOpen(BankError):
    """The account was opened twice."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        super().__init__(f"the account is already open for {owner}")


class InsufficientFunds(BankError):
    """A withdrawal exceeded the balance."""

    def __init__(self, balance: int, amount: int) -> None:
        self.balance = balance
        self.amount = amount
        super().__init__(f"balance is {balance} cents, cannot withdraw {amount}")


def _check_amount(amount: int) -> None:
    if amount <= 0:
        raise InvalidAmount(amount)


# -- style 1: the functional decider ------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountState:
    """What the rules need to know about an account."""

    owner: str | None = None
    balance: int = 0


def decide(command: BankCommand, state: AccountState) -> list[BankEvent]:
    """Validate ``command`` against ``state``; return the events it causes."""
    match command:
        case OpenAccount(owner=owner, initial_deposit=initial):
            if state.owner is not None:
                raise AccountAlreadyOpen(state.owner)
            if initial < 0:
                raise InvalidAmount(initial)
            opened: list[BankEvent] = [AccountOpened(owner=owner)]
            return [*opened, MoneyDeposited(amount=initial)] if initial else opened
        case DepositMoney(amount=amount):
            if state.owner is None:
                raise AccountNotOpen
            _check_amount(amount)
            return [MoneyDeposited(amount=amount)]
        case WithdrawMoney(amount=amount):
            if state.owner is None:
                raise AccountNotOpen
            _check_amount(amount)
            if amount > state.balance:
                raise InsufficientFunds(state.balance, amount)
            return [MoneyWithdrawn(amount=amount)]
        case ReverseDeposit(amount=amount, reason=reason):
            if state.owner is None:
                raise AccountNotOpen
            _check_amount(amount)
            if amount > state.balance:
                raise InsufficientFunds(state.balance, amount)
            return [DepositReversed(amount=amount, reason=reason)]
        case _:
            assert_never(command)


def evolve(state: AccountState, event: BankEvent) -> AccountState:
    """Apply one event to the state."""
    match event:
        case AccountOpened(owner=owner):
            return replace(state, owner=owner)
        case MoneyDeposited(amount=amount):
            return replace(state, balance=state.balance + amount)
        case MoneyWithdrawn(amount=amount) | DepositReversed(amount=amount):
            return replace(state, balance=state.balance - amount)
        case _:
            assert_never(event)


account = Decider(decide, evolve, AccountState)

# -- style 2: the class-style aggregate ---------------------------------------------


class BankAccount(Aggregate):
    """The same rules as methods: commands ``record`` events, ``apply`` changes state."""

    def __init__(self) -> None:
        self.owner: str | None = None
        self.balance = 0

    def open(self, owner: str, initial_deposit: int = 0) -> None:
        """Open the account, optionally with a first deposit."""
        if self.owner is not None:
            raise AccountAlreadyOpen(self.owner)
        if initial_deposit < 0:
            raise InvalidAmount(initial_deposit)
        self.record(AccountOpened(owner=owner))
        if initial_deposit:
            self.record(MoneyDeposited(amount=initial_deposit))

    def deposit(self, amount: int) -> None:
        """Pay ``amount`` cents in."""
        if self.owner is None:
            raise AccountNotOpen
        _check_amount(amount)
        self.record(MoneyDeposited(amount=amount))

    def withdraw(self, amount: int) -> None:
        """Pay ``amount`` cents out, if the balance covers it."""
        if self.owner is None:
            raise AccountNotOpen
        _check_amount(amount)
        if amount > self.balance:
            raise InsufficientFunds(self.balance, amount)
        self.record(MoneyWithdrawn(amount=amount))

    def reverse_deposit(self, amount: int, reason: str) -> None:
        """Take back ``amount`` cents deposited in error (a compensating event)."""
        if self.owner is None:
            raise AccountNotOpen
        _check_amount(amount)
        if amount > self.balance:
            raise InsufficientFunds(self.balance, amount)
        self.record(DepositReversed(amount=amount, reason=reason))

    def apply(self, event: BankEvent) -> None:
        """Change state for one event (on load, and when a command records it)."""
        match event:
            case AccountOpened(owner=owner):
                self.owner = owner
            case MoneyDeposited(amount=amount):
                self.balance += amount
            case MoneyWithdrawn(amount=amount) | DepositReversed(amount=amount):
                self.balance -= amount
            case _:
                assert_never(event)


# -- corrections: compensate, never edit history -------------------------------------


class NotADeposit(BankError):
    """The event to reverse is not a deposit of this account."""

    def __init__(self, event_id: UUID) -> None:
        super().__init__(f"event {event_id} is not a deposit of this account")


def reverse_deposit(
    handler: CommandHandler[AccountState, BankCommand], stream: str, deposit_id: UUID, reason: str
) -> CommandResult[AccountState]:
    """Record a ``DepositReversed`` for the deposit event ``deposit_id`` of ``stream``.

    The reversal links to the original through metadata (``reverses`` and
    ``causation_id``), and uses an idempotency key derived from it, so asking
    twice reverses once.
    """
    original = next((e for e in handler.store.read(stream) if e.id == deposit_id), None)
    if original is None or not isinstance(original.data, MoneyDeposited):
        raise NotADeposit(deposit_id)
    return handler.handle(
        stream,
        ReverseDeposit(amount=original.data.amount, reason=reason),
        idempotency_key=f"reverse-deposit:{deposit_id}",
        metadata={"reverses": str(deposit_id), CAUSATION_ID: str(deposit_id)},
    )
