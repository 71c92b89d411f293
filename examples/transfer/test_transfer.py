"""The transfer saga: every path, and a crash injected at every step of every path.

A crash is injected around the k-th command the process manager sends: just
before it (the command never ran) or just after it (it committed but the
reply was lost). Either way the runner stops, the process "restarts" on a
freshly opened store, and the saga must end exactly as if nothing had
happened: the same balances, the same events, no command applied twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest

from eventfold import (
    CommandHandler,
    CommandResult,
    EventStore,
    MemoryEventStore,
    SqliteEventStore,
    StoreUnavailable,
)
from eventfold.examples.bank import (
    AccountNotOpen,
    DepositMoney,
    InsufficientFunds,
    OpenAccount,
    account,
)
from eventfold.projections import ErrorPolicy, ProjectionRunner, ProjectionStopped
from examples.transfer.saga import (
    CompleteTransfer,
    FailTransfer,
    InvalidTransfer,
    RecordDebit,
    RecordRefund,
    RequestTransfer,
    TransferAlreadyRequested,
    TransferCompleted,
    TransferDebited,
    TransferFailed,
    TransferNotRequested,
    TransferRefunded,
    TransferRequested,
    TransferState,
    balances,
    decide,
    transfer,
    transfer_process,
    transfer_stream,
)

S = TypeVar("S")
C = TypeVar("C")

ALICE, BOB, CAROL = "account-alice", "account-bob", "account-carol"  # Carol never opens one
TRANSFER = transfer_stream("t1")
OWNER = "transfer-worker"  # a restarted worker keeps its name, so it takes its lease back

# -- failure injection -------------------------------------------------------------------


@dataclass
class Crash:
    """Fail once around the ``at``-th command sent (1-based), ``before`` or ``after`` it runs.

    ``after`` models a reply lost after the commit: the command's effect is
    stored, but the caller sees an error (and a rejection it never learns of).
    """

    at: int | None = None
    when: Literal["before", "after"] = "before"
    error: Callable[[], Exception] = lambda: StoreUnavailable("connection lost")
    calls: list[str] = field(default_factory=list)
    fired: bool = False

    def around(self, label: str, run: Callable[[], CommandResult[S]]) -> CommandResult[S]:
        """Run one command, failing instead if it is the chosen step."""
        self.calls.append(label)
        due = not self.fired and len(self.calls) == self.at
        if due and self.when == "before":
            self.fired = True
            raise self.error()
        try:
            result = run()
        except Exception as rejected:
            if due:
                self.fired = True
                raise self.error() from rejected
            raise
        if due:
            self.fired = True
            raise self.error()
        return result


class CrashingHandler(CommandHandler[S, C]):
    """A command handler that lets a :class:`Crash` fail one of its commands."""

    crash: Crash | None = None

    def handle(
        self,
        stream: str,
        command: C,
        *,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> CommandResult[S]:
        """As CommandHandler.handle, logged in (and maybe failed by) ``self.crash``."""

        def run() -> CommandResult[S]:
            return super(CrashingHandler, self).handle(
                stream, command, idempotency_key=idempotency_key, metadata=metadata
            )

        if self.crash is None:
            return run()
        return self.crash.around(f"{type(command).__name__} {stream}", run)


# -- the application, as one process would wire it ----------------------------------------


@dataclass
class App:
    """Handlers, the saga and its runner on one store."""

    store: EventStore
    crash: Crash | None = None
    on_error: ErrorPolicy | None = None

    def __post_init__(self) -> None:
        self.bank = CrashingHandler(self.store, account)
        self.transfers = CrashingHandler(self.store, transfer)
        self.bank.crash = self.transfers.crash = self.crash
        process = transfer_process(self.bank, self.transfers, on_error=self.on_error)
        self.runner = ProjectionRunner(self.store, process.projection, owner=OWNER)


@pytest.fixture(params=["memory", "sqlite"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """Open the store: the same memory store, or a new connection to one SQLite file
    (what a restarted process does)."""
    opened: list[Any] = []
    shared = MemoryEventStore() if request.param == "memory" else None

    def open_one() -> Any:
        store = shared or SqliteEventStore(tmp_path / "transfer.db", durability="off")
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


# -- the three paths -----------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A transfer request and everything it must lead to."""

    name: str
    target: str
    amount: int
    calls: list[str]
    status: str
    balances: dict[str, int]
    account_events: dict[str, list[str]]
    transfer_events: list[type]


OPENING = ["bank.AccountOpened", "bank.MoneyDeposited"]
HAPPY = Scenario(
    "happy",
    BOB,
    3_000,
    [
        f"WithdrawMoney {ALICE}",
        f"RecordDebit {TRANSFER}",
        f"DepositMoney {BOB}",
        f"CompleteTransfer {TRANSFER}",
    ],
    "completed",
    {ALICE: 7_000, BOB: 3_500, CAROL: 0},
    {
        ALICE: [*OPENING, "bank.MoneyWithdrawn"],
        BOB: [*OPENING, "bank.MoneyDeposited"],
        CAROL: [],
    },
    [TransferRequested, TransferDebited, TransferCompleted],
)
INSUFFICIENT_FUNDS = Scenario(
    "insufficient-funds",
    BOB,
    20_000,
    [
        f"WithdrawMoney {ALICE}",  # rejected
        f"FailTransfer {TRANSFER}",
        f"RecordDebit {TRANSFER}",  # a no-op once the transfer failed
    ],
    "failed",
    {ALICE: 10_000, BOB: 500, CAROL: 0},
    {ALICE: OPENING, BOB: OPENING, CAROL: []},
    [TransferRequested, TransferFailed],
)
CREDIT_REJECTED = Scenario(
    "credit-rejected",
    CAROL,
    3_000,
    [
        f"WithdrawMoney {ALICE}",
        f"RecordDebit {TRANSFER}",
        f"DepositMoney {CAROL}",  # rejected: AccountNotOpen
        f"FailTransfer {TRANSFER}",
        f"CompleteTransfer {TRANSFER}",  # a no-op once the transfer failed
        f"DepositMoney {ALICE}",  # the refund
        f"RecordRefund {TRANSFER}",
    ],
    "refunded",
    {ALICE: 10_000, BOB: 500, CAROL: 0},
    {
        ALICE: [*OPENING, "bank.MoneyWithdrawn", "bank.MoneyDeposited"],
        BOB: OPENING,
        CAROL: [],
    },
    [TransferRequested, TransferDebited, TransferFailed, TransferRefunded],
)
SCENARIOS = [HAPPY, INSUFFICIENT_FUNDS, CREDIT_REJECTED]
TOTAL = 10_500  # what Alice and Bob hold between them, before and after any transfer


def given_accounts_and_request(store: EventStore, scenario: Scenario) -> None:
    """Alice holds 10,000 and Bob 500; the scenario's transfer from Alice is requested."""
    bank = CommandHandler(store, account)
    bank.handle(ALICE, OpenAccount("Alice", 10_000))
    bank.handle(BOB, OpenAccount("Bob", 500))
    CommandHandler(store, transfer).handle(
        TRANSFER, RequestTransfer(ALICE, scenario.target, scenario.amount)
    )


def assert_outcome(store: EventStore, scenario: Scenario) -> None:
    """Balances, exact event histories (nothing doubled), state, and money conserved."""
    bank = CommandHandler(store, account)
    assert balances(bank, ALICE, BOB, CAROL) == scenario.balances
    assert sum(scenario.balances.values()) == TOTAL
    for stream, types in scenario.account_events.items():
        assert [e.type for e in store.read(stream)] == types, stream
    history = list(store.read(TRANSFER))
    assert [type(e.data) for e in history] == scenario.transfer_events
    assert [e.version for e in history] == list(range(1, len(history) + 1))
    assert CommandHandler(store, transfer).load(TRANSFER).state.status == scenario.status
    keys = [
        e.metadata["idempotency_key"] for e in store.read_all() if "idempotency_key" in e.metadata
    ]
    assert len(keys) == len(set(keys)), "an event was written twice by one command"


# -- the decider alone ----------------------------------------------------------------------


def test_transfer_rules_are_plain_functions() -> None:
    requested = transfer.fold([TransferRequested(source=ALICE, target=BOB, amount=5)])
    assert requested == TransferState("requested", ALICE, BOB, 5)
    with pytest.raises(InvalidTransfer):
        decide(RequestTransfer(ALICE, BOB, 0), TransferState())
    with pytest.raises(InvalidTransfer):
        decide(RequestTransfer(ALICE, ALICE, 5), TransferState())
    with pytest.raises(TransferAlreadyRequested):
        decide(RequestTransfer(ALICE, BOB, 5), requested)
    with pytest.raises(TransferNotRequested):
        decide(RecordDebit(), TransferState())
    # Whether a refund is due follows from the recorded state, not the caller.
    assert decide(FailTransfer("no"), requested) == [TransferFailed(reason="no", refund_due=False)]
    debited = transfer.evolve(requested, TransferDebited(amount=5))
    assert decide(FailTransfer("no"), debited) == [TransferFailed(reason="no", refund_due=True)]
    # Steps overtaken by a failure, or recorded already, do nothing.
    failed = transfer.evolve(requested, TransferFailed(reason="no", refund_due=False))
    assert decide(RecordDebit(), failed) == []
    assert decide(RecordRefund(), failed) == []
    assert decide(CompleteTransfer(), requested) == []
    assert decide(RecordDebit(), debited) == []


# -- each path, run straight through ----------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_saga_path(scenario: Scenario, open_store: Callable[[], Any]) -> None:
    store = open_store()
    given_accounts_and_request(store, scenario)
    app = App(store, Crash())

    app.runner.run_once()

    assert app.crash is not None and app.crash.calls == scenario.calls
    assert_outcome(store, scenario)
    # The saga's first decision names the request that caused it.
    request, decision, *_ = store.read(TRANSFER)
    assert decision.metadata["causation_id"] == str(request.id)


def test_failure_reason_is_recorded(open_store: Callable[[], Any]) -> None:
    store = open_store()
    given_accounts_and_request(store, INSUFFICIENT_FUNDS)
    App(store).runner.run_once()
    failed = list(store.read(TRANSFER))[-1].data
    assert isinstance(failed, TransferFailed)
    assert failed.reason == str(InsufficientFunds(10_000, 20_000))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_redelivering_every_event_changes_nothing(
    scenario: Scenario, open_store: Callable[[], Any]
) -> None:
    store = open_store()
    given_accounts_and_request(store, scenario)
    App(store).runner.run_once()
    position = store.last_position()

    # A checkpoint lost entirely: every event is delivered again from the start.
    handled = App(open_store()).runner.rebuild(replay_effects=True)  # idempotent commands

    assert handled > 0
    assert store.last_position() == position
    assert_outcome(store, scenario)


# -- a crash at every step of every path ------------------------------------------------------

CRASH_POINTS = [
    pytest.param(scenario, step, when, id=f"{scenario.name}-step{step}-{when}")
    for scenario in SCENARIOS
    for step in range(1, len(scenario.calls) + 1)
    for when in ("before", "after")
]
ERRORS: dict[str, Callable[[], Exception]] = {
    "store-unavailable": lambda: StoreUnavailable("database restarting"),
    "plain-exception": lambda: ConnectionResetError("peer went away"),
}


@pytest.mark.parametrize("error", list(ERRORS))
@pytest.mark.parametrize(("scenario", "step", "when"), CRASH_POINTS)
def test_crash_at_every_step_then_restart(
    scenario: Scenario,
    step: int,
    when: Literal["before", "after"],
    error: str,
    open_store: Callable[[], Any],
) -> None:
    store = open_store()
    given_accounts_and_request(store, scenario)
    crash = Crash(step, when, ERRORS[error])

    with pytest.raises(ProjectionStopped) as stopped:
        App(store, crash).runner.run_once()

    assert crash.fired and len(crash.calls) == step
    assert isinstance(stopped.value.error, StoreUnavailable | ConnectionResetError)
    assert crash.calls == scenario.calls[:step]
    # The process restarts: new connection, new handlers, the checkpoint it left.
    App(open_store()).runner.run_once()
    assert_outcome(open_store(), scenario)


def test_a_failure_once_recorded_is_not_retried(open_store: Callable[[], Any]) -> None:
    """The credit was rejected and TransferFailed recorded, then the worker died before
    its checkpoint moved. Carol opens her account before it restarts: the redelivered
    TransferDebited must not credit her now, or the refund would pay the money twice."""
    store = open_store()
    given_accounts_and_request(store, CREDIT_REJECTED)
    with pytest.raises(ProjectionStopped):
        App(store, Crash(4, "after")).runner.run_once()  # after FailTransfer committed
    CommandHandler(store, account).handle(CAROL, OpenAccount("Carol"))

    App(open_store()).runner.run_once()

    bank = CommandHandler(store, account)
    assert balances(bank, ALICE, BOB, CAROL) == CREDIT_REJECTED.balances
    assert [e.type for e in store.read(CAROL)] == ["bank.AccountOpened"]
    assert [e.type for e in store.read(ALICE)] == CREDIT_REJECTED.account_events[ALICE]
    assert [type(e.data) for e in store.read(TRANSFER)] == CREDIT_REJECTED.transfer_events


def test_a_rejection_not_yet_recorded_is_decided_again(open_store: Callable[[], Any]) -> None:
    """The withdrawal was rejected but the worker died before recording TransferFailed:
    no decision was stored, so after a top-up the redelivered request succeeds."""
    store = open_store()
    given_accounts_and_request(store, INSUFFICIENT_FUNDS)
    with pytest.raises(ProjectionStopped):
        App(store, Crash(2, "before")).runner.run_once()  # before FailTransfer
    CommandHandler(store, account).handle(ALICE, DepositMoney(10_000))

    App(open_store()).runner.run_once()

    bank = CommandHandler(store, account)
    assert balances(bank, ALICE, BOB) == {ALICE: 0, BOB: 20_500}
    assert CommandHandler(store, transfer).load(TRANSFER).state.status == "completed"


def test_a_retry_policy_rides_out_a_transient_error_in_process(
    open_store: Callable[[], Any],
) -> None:
    store = open_store()
    given_accounts_and_request(store, HAPPY)
    crash = Crash(3, "after")  # the credit committed, its reply was lost
    app = App(store, crash, on_error=ErrorPolicy(retries=2, backoff=0))

    app.runner.run_once()  # no ProjectionStopped: the event was retried at once

    assert crash.fired
    assert crash.calls == [*HAPPY.calls[:3], *HAPPY.calls[2:]]  # the credit was sent twice...
    assert_outcome(store, HAPPY)  # ...and applied once
    assert app.runner.status().last_error is None


def test_many_transfers_conserve_money(open_store: Callable[[], Any]) -> None:
    store = open_store()
    bank = CommandHandler(store, account)
    accounts = [f"account-{n}" for n in range(5)]
    for n, stream in enumerate(accounts):
        bank.handle(stream, OpenAccount(f"owner {n}", 1_000 * (n + 1)))
    transfers = CommandHandler(store, transfer)
    for n in range(20):
        # Around the ring, some too large to be covered, some to an account never opened.
        target = "account-missing" if n % 7 == 3 else accounts[(n + 1) % 5]
        transfers.handle(
            transfer_stream(f"ring-{n}"), RequestTransfer(accounts[n % 5], target, 300 * (n + 1))
        )

    App(store).runner.run_once()

    statuses = [transfers.load(transfer_stream(f"ring-{n}")).state.status for n in range(20)]
    assert set(statuses) == {"completed", "failed", "refunded"}
    assert sum(balances(bank, *accounts).values()) == 15_000
    with pytest.raises(AccountNotOpen):
        bank.handle("account-missing", DepositMoney(1))
