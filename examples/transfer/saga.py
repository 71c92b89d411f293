"""A money transfer between two accounts of :mod:`eventfold.examples.bank`, as a saga.

This saga is for accounts that no transaction spans (in different services or
stores) and for steps that take long: a transfer is then a sequence of
single-stream commands driven by a process manager, with its progress kept in
its own stream ``transfer-<id>``. (Two accounts of one store can be debited
and credited in one atomic ``append_many``: ``eventfold.examples.bank.transfer``,
and docs/concepts.md on choosing.)::

    TransferRequested --withdraw from source--> TransferDebited --deposit to target-->
    TransferCompleted

    withdrawal rejected (InsufficientFunds, AccountNotOpen) -> TransferFailed (no refund)
    deposit rejected (AccountNotOpen)  -> TransferFailed (refund due) --deposit back
    to source--> TransferRefunded

Every decision of the saga is an event of the transfer stream, and the process
manager looks at the transfer's state before acting: a redelivered event then
finds its decision already taken instead of taking it again (see
:func:`transfer_process`). Every command it sends carries an idempotency key
derived from the triggering event, so a command that committed before a crash
is recognised on redelivery and not applied twice.

Wiring::

    bank = CommandHandler(store, account)          # eventfold.examples.bank
    transfers = CommandHandler(store, transfer)
    transfers.handle("transfer-1", RequestTransfer("account-a", "account-b", 500))
    ProjectionRunner(store, transfer_process(bank, transfers).projection).run(stop)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, assert_never

from eventfold import CommandHandler, Decider, Event, RecordedEvent
from eventfold.examples.bank import (
    AccountState,
    BankCommand,
    BankError,
    DepositMoney,
    WithdrawMoney,
)
from eventfold.processes import Dispatch, ProcessManager
from eventfold.projections import ErrorPolicy

# -- events: the saga's decisions ------------------------------------------------------


class TransferRequested(Event, frozen=True):
    """Move ``amount`` cents from the ``source`` account stream to ``target``."""

    __event_type__ = "transfer.TransferRequested"
    source: str
    target: str
    amount: int


class TransferDebited(Event, frozen=True):
    """The source account paid ``amount`` out for this transfer."""

    __event_type__ = "transfer.TransferDebited"
    amount: int


class TransferCompleted(Event, frozen=True):
    """The target account received the money: the transfer is done."""

    __event_type__ = "transfer.TransferCompleted"


class TransferFailed(Event, frozen=True):
    """A step was rejected; ``refund_due`` when the source had already paid."""

    __event_type__ = "transfer.TransferFailed"
    reason: str
    refund_due: bool


class TransferRefunded(Event, frozen=True):
    """The source account got its ``amount`` back after a failed credit."""

    __event_type__ = "transfer.TransferRefunded"
    amount: int


TransferEvent = (
    TransferRequested | TransferDebited | TransferCompleted | TransferFailed | TransferRefunded
)

# -- commands ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestTransfer:
    """Ask for ``amount`` cents to move from ``source`` to ``target`` (account streams)."""

    source: str
    target: str
    amount: int


@dataclass(frozen=True, slots=True)
class RecordDebit:
    """The process manager withdrew the money from the source."""


@dataclass(frozen=True, slots=True)
class CompleteTransfer:
    """The process manager deposited the money to the target."""


@dataclass(frozen=True, slots=True)
class FailTransfer:
    """A bank command of the transfer was rejected for ``reason``."""

    reason: str


@dataclass(frozen=True, slots=True)
class RecordRefund:
    """The process manager paid the money back to the source."""


TransferCommand = RequestTransfer | RecordDebit | CompleteTransfer | FailTransfer | RecordRefund


class TransferError(Exception):
    """A transfer command broke a rule; nothing was written."""


class InvalidTransfer(TransferError):
    """The request itself makes no sense (amount, same account twice)."""


class TransferAlreadyRequested(TransferError):
    """The transfer stream already holds a request."""

    def __init__(self) -> None:
        super().__init__("this transfer was already requested")


class TransferNotRequested(TransferError):
    """A step was recorded for a transfer nobody requested."""

    def __init__(self) -> None:
        super().__init__("this transfer was never requested")


# -- the transfer decider ----------------------------------------------------------------

Status = Literal["new", "requested", "debited", "completed", "failed", "refunding", "refunded"]


@dataclass(frozen=True, slots=True)
class TransferState:
    """Where a transfer stands. ``failed`` and ``refunded`` and ``completed`` are final."""

    status: Status = "new"
    source: str = ""
    target: str = ""
    amount: int = 0
    reason: str | None = None


def decide(command: TransferCommand, state: TransferState) -> list[TransferEvent]:
    """Record a step of the saga, if it still applies to the transfer's state.

    A step that no longer applies (already recorded, or overtaken by a
    failure) returns no events rather than raising: the process manager
    sends the remaining commands of a reaction even after one of them was
    rejected and compensated, and those must then do nothing.
    """
    match command:
        case RequestTransfer(source=source, target=target, amount=amount):
            if state.status != "new":
                raise TransferAlreadyRequested
            if amount <= 0:
                raise InvalidTransfer(f"amount must be a positive number of cents, not {amount}")
            if source == target:
                raise InvalidTransfer(f"cannot transfer from {source!r} to itself")
            return [TransferRequested(source=source, target=target, amount=amount)]
        case _ if state.status == "new":
            raise TransferNotRequested
        case RecordDebit():
            return [TransferDebited(amount=state.amount)] if state.status == "requested" else []
        case CompleteTransfer():
            return [TransferCompleted()] if state.status == "debited" else []
        case FailTransfer(reason=reason):
            # Whether money must go back follows from what was recorded, not
            # from the caller: only a debited transfer owes a refund.
            if state.status not in ("requested", "debited"):
                return []
            return [TransferFailed(reason=reason, refund_due=state.status == "debited")]
        case RecordRefund():
            return [TransferRefunded(amount=state.amount)] if state.status == "refunding" else []
        case _:
            assert_never(command)


def evolve(state: TransferState, event: TransferEvent) -> TransferState:
    """Apply one transfer event."""
    match event:
        case TransferRequested(source=source, target=target, amount=amount):
            return TransferState("requested", source, target, amount)
        case TransferDebited():
            return replace(state, status="debited")
        case TransferCompleted():
            return replace(state, status="completed")
        case TransferFailed(reason=reason, refund_due=refund_due):
            return replace(state, status="refunding" if refund_due else "failed", reason=reason)
        case TransferRefunded():
            return replace(state, status="refunded")
        case _:
            assert_never(event)


transfer = Decider(decide, evolve, TransferState)

# -- the process manager -----------------------------------------------------------------

TRANSFER_EVENT_TYPES = [
    TransferRequested.__event_type__,
    TransferDebited.__event_type__,
    TransferFailed.__event_type__,
]


def transfer_process(
    bank: CommandHandler[AccountState, BankCommand],
    transfers: CommandHandler[TransferState, TransferCommand],
    *,
    name: str = "transfers",
    on_error: ErrorPolicy | None = None,
) -> ProcessManager:
    """The saga: reacts to transfer events with bank commands and records the outcome.

    Each reaction is guarded by the transfer's *current* state, not only by the
    event: after a crash, events are delivered again, and a rejected bank
    command leaves no trace that an idempotency key could find. Without the
    guard, a redelivered ``TransferDebited`` would retry a credit that was
    already given up on (and refunded), paying the money out twice.
    """

    def react(event: RecordedEvent) -> list[Dispatch]:
        state = transfers.load(event.stream).state
        record = event.stream
        match event.data:
            case TransferRequested() if state.status == "requested":
                return [
                    Dispatch(bank, state.source, WithdrawMoney(state.amount)),
                    Dispatch(transfers, record, RecordDebit()),
                ]
            case TransferDebited() if state.status == "debited":
                return [
                    Dispatch(bank, state.target, DepositMoney(state.amount)),
                    Dispatch(transfers, record, CompleteTransfer()),
                ]
            case TransferFailed() if state.status == "refunding":
                return [
                    Dispatch(bank, state.source, DepositMoney(state.amount)),
                    Dispatch(transfers, record, RecordRefund()),
                ]
            case _:
                return []  # already handled, or nothing to do (final states)

    def on_rejected(event: RecordedEvent, dispatch: Dispatch, error: Exception) -> list[Dispatch]:
        # The process manager calls this for *any* non-eventfold exception;
        # only the bank's rules are a business outcome. Anything else (a bug,
        # a network error) must reach the error policy, so it is re-raised.
        if not isinstance(error, BankError) or dispatch.handler is not bank:
            raise error
        if not isinstance(event.data, TransferRequested | TransferDebited):
            raise error  # a rejected refund needs a human: stop the saga visibly
        return [Dispatch(transfers, event.stream, FailTransfer(reason=str(error)))]

    return ProcessManager(
        name,
        react,
        types=TRANSFER_EVENT_TYPES,
        stream_prefix="transfer-",
        on_rejected=on_rejected,
        on_error=on_error,
    )


def transfer_stream(transfer_id: str) -> str:
    """The stream of transfer ``transfer_id``."""
    return f"transfer-{transfer_id}"


def balances(bank: CommandHandler[AccountState, Any], *streams: str) -> dict[str, int]:
    """The balance of each account stream (a convenience for checks and demos)."""
    return {stream: bank.load(stream).state.balance for stream in streams}
