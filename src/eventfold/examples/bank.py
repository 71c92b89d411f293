"""A bank account, event sourced: copy this file to start your own model.

Amounts are integer cents (never floats for money). The same rules are
written twice, in the two styles eventfold supports:

* a functional decider, ``account = Decider(decide, evolve, AccountState)``,
  used as ``CommandHandler(store, account).handle(stream, DepositMoney(500))``;
* a class-style aggregate, ``BankAccount``, used as
  ``CommandHandler(store, BankAccount).handle(stream, lambda a: a.deposit(500))``.

Both write the same events, so a stream written by one can be loaded by the other.
:func:`transfer` moves money between two accounts in one atomic append.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import assert_never
from uuid import UUID, uuid5

from eventfold import (
    CAUSATION_ID,
    Aggregate,
    AppendResult,
    CommandHandler,
    CommandResult,
    Decider,
    Event,
    NewEvent,
    StreamAppend,
    WrongExpectedVersion,
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


# -- a transfer between two accounts: one atomic multi-stream append -----------------


class SameAccount(BankError):
    """A transfer named one account as both its source and its target."""

    def __init__(self, stream: str) -> None:
        super().__init__(f"cannot transfer from {stream!r} to itself")


_TRANSFER_IDS = uuid5(UUID(int=0), "eventfold.examples.bank.transfer")


def transfer(
    handler: CommandHandler[AccountState, BankCommand],
    source: str,
    target: str,
    amount: int,
    *,
    transfer_id: str | None = None,
    attempts: int = 5,
) -> tuple[AppendResult, AppendResult]:
    """Move ``amount`` cents from account ``source`` to account ``target``: both or neither.

    Both accounts are loaded and the withdrawal and the deposit decided by
    the rules of single commands (an unopened account, a short balance or a
    bad amount is refused, writing nothing); then both are written by one
    ``append_many``, each under its account's version as loaded. If another
    writer changed either account meanwhile (WrongExpectedVersion), both are
    loaded and decided again (the transfer may now be refused), at most
    ``attempts`` times; the last conflict is raised.

    With a ``transfer_id`` it is safe to repeat (after a timeout, say): the
    two events get ids derived from it, and a transfer already stored is
    sent again as it was, which the store answers with the original results.

    For two accounts of one store; when they live in different services, or
    a step takes long, use the saga of ``examples/transfer`` (docs/concepts.md).
    """
    if source == target:
        raise SameAccount(source)
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    store = handler.store
    out_id = in_id = None
    if transfer_id is not None:
        out_id = uuid5(_TRANSFER_IDS, f"{transfer_id}:out")
        in_id = uuid5(_TRANSFER_IDS, f"{transfer_id}:in")
        out, into = store.find_event(out_id), store.find_event(in_id)
        if out is not None and into is not None:  # stored before: repeat it as it was
            first, second = store.append_many(
                [
                    StreamAppend(out.stream, [NewEvent(data=out.data, id=out_id)]),
                    StreamAppend(into.stream, [NewEvent(data=into.data, id=in_id)]),
                ]
            )
            return first, second
    attempt = 1
    while True:
        paying, receiving = handler.load(source), handler.load(target)
        withdrawn = decide(WithdrawMoney(amount), paying.state)
        deposited = decide(DepositMoney(amount), receiving.state)
        try:
            first, second = store.append_many(
                [
                    StreamAppend(source, _with_id(withdrawn, out_id), expected=paying.version),
                    StreamAppend(target, _with_id(deposited, in_id), expected=receiving.version),
                ]
            )
        except WrongExpectedVersion:
            if attempt == attempts:
                raise
            attempt += 1
            continue
        return first, second


def _with_id(events: list[BankEvent], event_id: UUID | None) -> list[object]:
    """The single event of a decision, with the given id (None: a fresh one)."""
    if event_id is None:
        return list(events)
    (event,) = events
    return [NewEvent(data=event, id=event_id)]
