"""The bank account of the article, run through eventfold's stores and command handler.

Every behavioural test runs for both styles (decider and class-style aggregate)
on both the in-memory and the SQLite store; the atomic transfer runs on SQLite
and PostgreSQL (and the memory store).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from eventfold import (
    ANY,
    AppendResult,
    CommandHandler,
    Decider,
    EventStore,
    Expected,
    MemoryEventStore,
    SqliteEventStore,
    StreamAppend,
    WrongExpectedVersion,
)
from eventfold.examples.bank import (
    AccountAlreadyOpen,
    AccountNotOpen,
    AccountOpened,
    AccountState,
    BankAccount,
    DepositMoney,
    DepositReversed,
    InsufficientFunds,
    InvalidAmount,
    MoneyDeposited,
    MoneyWithdrawn,
    NotADeposit,
    OpenAccount,
    SameAccount,
    WithdrawMoney,
    account,
    decide,
    evolve,
    reverse_deposit,
    transfer,
)
from eventfold.store.postgres import PostgresEventStore, migrate
from tests.support.pg import new_schema_name, pg_database  # noqa: F401 - a fixture, used by name

ALICE = "account-alice"
BOB = "account-bob"


@dataclass(frozen=True)
class Style:
    """One way of writing the model: how to build a handler and its commands."""

    name: str
    model: Any
    replayer: Decider[Any, Any, Any]
    open: Callable[..., Any]
    deposit: Callable[[int], Any]
    withdraw: Callable[[int], Any]

    def handler(self, store: EventStore, **options: Any) -> CommandHandler[Any, Any]:
        return CommandHandler(store, self.model, **options)


DECIDER = Style(
    "decider",
    account,
    account,
    lambda owner, initial=0: OpenAccount(owner, initial),
    DepositMoney,
    WithdrawMoney,
)
AGGREGATE = Style(
    "aggregate",
    BankAccount,
    BankAccount.decider(),
    lambda owner, initial=0: lambda a: a.open(owner, initial),
    lambda amount: lambda a: a.deposit(amount),
    lambda amount: lambda a: a.withdraw(amount),
)


@pytest.fixture(params=[DECIDER, AGGREGATE], ids=lambda s: s.name)
def style(request: pytest.FixtureRequest) -> Style:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=["memory", "sqlite"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """Open a store on the same data: the shared memory store, or a new SQLite connection
    to one file (as a second process would)."""
    opened: list[Any] = []
    shared = MemoryEventStore() if request.param == "memory" else None

    def open_one() -> Any:
        store = shared if shared is not None else SqliteEventStore(tmp_path / "bank.db")
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[[], Any]) -> Any:
    return open_store()


def stored_types(store: Any, stream: str) -> list[str]:
    return [event.type for event in store.read(stream)]


class OtherWriterFirst:
    """A store through which, just before the first append, another writer commits.

    This makes the lost-update race deterministic: our handler has loaded and
    decided on a version that is stale by the time it appends.
    """

    def __init__(self, store: Any, other_write: Callable[[], object]) -> None:
        self._store = store
        self._other_write: Callable[[], object] | None = other_write
        self.appends = 0
        self.conflicts: list[WrongExpectedVersion] = []

    def append(
        self, stream: str, events: Sequence[object], *, expected: Expected = ANY
    ) -> AppendResult:
        self.appends += 1
        if self._other_write is not None:
            other_write, self._other_write = self._other_write, None
            other_write()
        try:
            return self._store.append(stream, events, expected=expected)  # type: ignore[no-any-return]
        except WrongExpectedVersion as exc:
            self.conflicts.append(exc)
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


# -- the decider alone: pure functions, no store -----------------------------------------


def test_decide_and_evolve_are_plain_functions() -> None:
    opened = AccountState(owner="Alice", balance=0)
    assert decide(OpenAccount("Alice"), AccountState()) == [AccountOpened(owner="Alice")]
    assert decide(OpenAccount("Alice", 100), AccountState()) == [
        AccountOpened(owner="Alice"),
        MoneyDeposited(amount=100),
    ]
    with pytest.raises(InsufficientFunds):
        decide(WithdrawMoney(1), opened)
    with pytest.raises(AccountNotOpen):
        decide(DepositMoney(1), AccountState())
    state = account.fold([AccountOpened(owner="Alice"), MoneyDeposited(amount=70)])
    assert evolve(state, MoneyWithdrawn(amount=20)) == AccountState("Alice", 50)
    assert state == AccountState("Alice", 70)  # evolve returned a new state


# -- the article's scenario through the command handler ----------------------------------


def test_article_scenario(style: Style, store: Any) -> None:
    handler = style.handler(store)
    handler.handle(ALICE, style.open("Alice Smith", 10_000))
    handler.handle(ALICE, style.deposit(5_000))
    result = handler.handle(ALICE, style.withdraw(2_000))

    assert result.state.balance == 13_000
    assert result.version == 4
    assert result.events == (MoneyWithdrawn(amount=2_000),)
    loaded = handler.load(ALICE)
    assert (loaded.state.owner, loaded.state.balance, loaded.version) == ("Alice Smith", 13_000, 4)
    assert stored_types(store, ALICE) == [
        "bank.AccountOpened",
        "bank.MoneyDeposited",
        "bank.MoneyDeposited",
        "bank.MoneyWithdrawn",
    ]


def test_rejected_withdrawal_writes_nothing(style: Style, store: Any) -> None:
    handler = style.handler(store)
    handler.handle(BOB, style.open("Bob Johnson", 5_000))
    position = store.last_position()

    with pytest.raises(InsufficientFunds) as rejected:
        handler.handle(BOB, style.withdraw(10_000))

    assert (rejected.value.balance, rejected.value.amount) == (5_000, 10_000)
    assert store.get_stream(BOB).version == 2
    assert store.last_position() == position
    assert handler.load(BOB).state.balance == 5_000


@pytest.mark.parametrize("amount", [0, -100])
def test_invalid_amounts_are_rejected(style: Style, store: Any, amount: int) -> None:
    handler = style.handler(store)
    handler.handle(ALICE, style.open("Alice"))
    for command in (style.deposit(amount), style.withdraw(amount)):
        with pytest.raises(InvalidAmount):
            handler.handle(ALICE, command)
    assert store.get_stream(ALICE).version == 1


def test_unopened_and_reopened_accounts_are_rejected(style: Style, store: Any) -> None:
    handler = style.handler(store)
    with pytest.raises(AccountNotOpen):
        handler.handle(ALICE, style.deposit(100))
    assert store.get_stream(ALICE) is None

    handler.handle(ALICE, style.open("Alice"))
    with pytest.raises(AccountAlreadyOpen):
        handler.handle(ALICE, style.open("Mallory"))
    assert handler.load(ALICE).state.owner == "Alice"


# -- optimistic concurrency -----------------------------------------------------------


def test_conflict_is_retried_against_reloaded_state(
    style: Style, open_store: Callable[[], Any]
) -> None:
    style.handler(open_store()).handle(ALICE, style.open("Alice", 13_000))
    teller_b = style.handler(open_store())
    racing = OtherWriterFirst(open_store(), lambda: teller_b.handle(ALICE, style.deposit(2_500)))
    teller_a = style.handler(racing)

    result = teller_a.handle(ALICE, style.withdraw(3_000))

    [conflict] = racing.conflicts
    assert (conflict.stream, conflict.expected, conflict.actual) == (ALICE, 2, 3)
    assert racing.appends == 2
    assert result.version == 4
    assert result.state.balance == 13_000 + 2_500 - 3_000
    assert stored_types(open_store(), ALICE)[2:] == ["bank.MoneyDeposited", "bank.MoneyWithdrawn"]


def test_retry_decides_again_and_may_reject(style: Style, open_store: Callable[[], Any]) -> None:
    style.handler(open_store()).handle(ALICE, style.open("Alice", 13_000))
    teller_b = style.handler(open_store())
    racing = OtherWriterFirst(open_store(), lambda: teller_b.handle(ALICE, style.withdraw(10_000)))
    teller_a = style.handler(racing)

    with pytest.raises(InsufficientFunds) as rejected:
        teller_a.handle(ALICE, style.withdraw(10_000))

    assert len(racing.conflicts) == 1
    assert rejected.value.balance == 3_000
    store = open_store()
    assert store.get_stream(ALICE).version == 3
    assert style.handler(store).load(ALICE).state.balance == 3_000


def test_concurrent_threads_lose_no_update(style: Style, open_store: Callable[[], Any]) -> None:
    style.handler(open_store()).handle(ALICE, style.open("Alice"))
    threads, deposits = 4, 10
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def teller() -> None:
        handler = style.handler(open_store(), max_retries=30, retry_delay=0.0005)
        start.wait()
        try:
            for _ in range(deposits):
                handler.handle(ALICE, style.deposit(100))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=teller) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []
    store = open_store()
    assert [event.version for event in store.read(ALICE)] == list(range(1, threads * deposits + 2))
    assert style.handler(store).load(ALICE).state.balance == threads * deposits * 100


# -- replay and idempotency ----------------------------------------------------------------


def test_replay_from_events_gives_the_same_balance(style: Style, store: Any) -> None:
    handler = style.handler(store)
    handler.handle(ALICE, style.open("Alice", 10_000))
    handler.handle(ALICE, style.deposit(5_000))
    result = handler.handle(ALICE, style.withdraw(2_000))

    replayed = style.replayer.fold(event.data for event in store.read(ALICE))

    assert replayed.balance == result.state.balance == 13_000
    halfway = style.replayer.fold(event.data for event in store.read(ALICE, limit=2))
    assert halfway.balance == 10_000


def test_both_styles_read_each_others_streams(store: Any) -> None:
    DECIDER.handler(store).handle(ALICE, OpenAccount("Alice", 700))
    AGGREGATE.handler(store).handle(ALICE, lambda a: a.withdraw(200))
    DECIDER.handler(store).handle(ALICE, DepositMoney(50))

    as_state = DECIDER.handler(store).load(ALICE)
    as_object = AGGREGATE.handler(store).load(ALICE)
    assert as_state.state == AccountState("Alice", 550)
    assert (as_object.state.balance, as_object.version) == (550, as_state.version) == (550, 4)


def test_sqlite_history_survives_reopening(style: Style, tmp_path: Path) -> None:
    path = tmp_path / "bank.db"
    with SqliteEventStore(path) as first:
        style.handler(first).handle(ALICE, style.open("Alice", 4_200))
        style.handler(first).handle(ALICE, style.withdraw(200))
    with SqliteEventStore(path) as second:
        loaded = style.handler(second).load(ALICE)
    assert (loaded.state.balance, loaded.version) == (4_000, 3)


def test_idempotency_key_resend_is_replayed(style: Style, store: Any) -> None:
    handler = style.handler(store)
    handler.handle(ALICE, style.open("Alice", 1_000))
    first = handler.handle(ALICE, style.deposit(2_500), idempotency_key="deposit-42")
    position = store.last_position()

    again = handler.handle(ALICE, style.deposit(2_500), idempotency_key="deposit-42")

    assert (first.replayed, again.replayed) == (False, True)
    assert again.events == first.events == (MoneyDeposited(amount=2_500),)
    assert again.version == first.version == 3
    assert store.last_position() == position
    assert handler.load(ALICE).state.balance == 3_500
    other = handler.handle(ALICE, style.deposit(2_500), idempotency_key="deposit-43")
    assert (other.replayed, other.version) == (False, 4)


# -- corrections: a compensating event, the original stays in history ----------------


def test_mistaken_deposit_is_reversed_by_a_compensating_event(store: Any) -> None:
    handler = CommandHandler(store, account)
    handler.handle(ALICE, OpenAccount("Alice", 10_000))
    handler.handle(ALICE, DepositMoney(99_900))  # a typo: should have been 999
    mistaken = next(e for e in store.read(ALICE, backwards=True) if e.version == 3)

    result = reverse_deposit(handler, ALICE, mistaken.id, reason="typo in amount")
    again = reverse_deposit(handler, ALICE, mistaken.id, reason="typo in amount")

    assert result.state.balance == 10_000
    assert result.events == (DepositReversed(amount=99_900, reason="typo in amount"),)
    assert again.replayed and again.version == result.version  # reversed once only
    history = list(store.read(ALICE))
    assert [type(e.data) for e in history] == [
        AccountOpened,
        MoneyDeposited,
        MoneyDeposited,
        DepositReversed,
    ]
    assert history[2].id == mistaken.id and history[2].data == MoneyDeposited(amount=99_900)
    assert history[3].metadata["reverses"] == str(mistaken.id)
    assert history[3].metadata["causation_id"] == str(mistaken.id)
    assert handler.load(ALICE, as_of_version=3).state.balance == 109_900
    assert CommandHandler(store, BankAccount).load(ALICE).state.balance == 10_000


def test_only_deposits_can_be_reversed(store: Any) -> None:
    handler = CommandHandler(store, account)
    handler.handle(ALICE, OpenAccount("Alice", 10_000))
    opened = next(iter(store.read(ALICE)))
    with pytest.raises(NotADeposit):
        reverse_deposit(handler, ALICE, opened.id, reason="not a deposit")
    assert store.get_stream(ALICE).version == 2


def test_class_style_reversal(store: Any) -> None:
    handler = CommandHandler(store, BankAccount)
    handler.handle(ALICE, lambda a: a.open("Alice", 500))
    result = handler.handle(ALICE, lambda a: a.reverse_deposit(500, "cheque bounced"))
    assert result.state.balance == 0
    with pytest.raises(InsufficientFunds):
        handler.handle(ALICE, lambda a: a.reverse_deposit(1, "nothing left"))


# -- an atomic transfer: both accounts in one append_many ------------------------------


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def bank_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A fresh store holding both accounts."""
    if request.param == "memory":
        yield MemoryEventStore()
    elif request.param == "sqlite":
        with SqliteEventStore(tmp_path / "bank.db") as sqlite:
            yield sqlite
    else:
        url = request.getfixturevalue("pg_database")
        schema = new_schema_name()
        migrate(url, schema=schema)
        with PostgresEventStore(url, schema=schema, max_size=2) as postgres:
            yield postgres


def open_both(store: Any, alice: int = 10_000, bob: int = 0) -> CommandHandler[Any, Any]:
    handler = CommandHandler(store, account)
    handler.handle(ALICE, OpenAccount("Alice", alice))
    handler.handle(BOB, OpenAccount("Bob", bob))
    return handler


def balances(store: Any) -> tuple[int, int]:
    handler = CommandHandler(store, account)
    return handler.load(ALICE).state.balance, handler.load(BOB).state.balance


class OtherWriterBeforeEachTransfer:
    """A store through which another writer commits before each of the first ``times``
    multi-stream appends: the transfer's loaded versions are stale by then."""

    def __init__(self, store: Any, other_write: Callable[[], object], times: int) -> None:
        self._store = store
        self._other_write = other_write
        self._times = times
        self.calls = 0
        self.conflicts: list[WrongExpectedVersion] = []

    def append_many(self, appends: Sequence[StreamAppend]) -> list[AppendResult]:
        self.calls += 1
        if self.calls <= self._times:
            self._other_write()
        try:
            return self._store.append_many(appends)  # type: ignore[no-any-return]
        except WrongExpectedVersion as exc:
            self.conflicts.append(exc)
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_transfer_moves_money_between_two_accounts_atomically(bank_store: Any) -> None:
    handler = open_both(bank_store)
    before = bank_store.last_position()

    out, into = transfer(handler, ALICE, BOB, 2_500)

    assert balances(bank_store) == (7_500, 2_500)
    assert (out.stream, out.from_version, into.stream, into.from_version) == (ALICE, 3, BOB, 2)
    written = list(bank_store.read_all(after=before))
    assert [(e.stream, e.data) for e in sorted(written, key=lambda e: e.stream)] == [
        (ALICE, MoneyWithdrawn(amount=2_500)),
        (BOB, MoneyDeposited(amount=2_500)),
    ]
    assert sorted([*out.positions, *into.positions]) == [e.position for e in written]


def test_refused_transfer_writes_nothing(bank_store: Any) -> None:
    handler = open_both(bank_store, alice=1_000)
    position = bank_store.last_position()
    with pytest.raises(InsufficientFunds) as short:
        transfer(handler, ALICE, BOB, 1_001)
    assert (short.value.balance, short.value.amount) == (1_000, 1_001)
    with pytest.raises(AccountNotOpen):
        transfer(handler, ALICE, "account-nobody", 100)
    with pytest.raises(InvalidAmount):
        transfer(handler, ALICE, BOB, 0)
    with pytest.raises(SameAccount):
        transfer(handler, ALICE, ALICE, 100)
    assert bank_store.last_position() == position
    assert bank_store.get_stream("account-nobody") is None
    assert balances(bank_store) == (1_000, 0)


def test_transfer_reloads_and_decides_again_after_a_conflict(bank_store: Any) -> None:
    open_both(bank_store, alice=5_000)
    teller = CommandHandler(bank_store, account)
    racing = OtherWriterBeforeEachTransfer(
        bank_store, lambda: teller.handle(ALICE, WithdrawMoney(1_000)), times=1
    )

    out, _ = transfer(CommandHandler(racing, account), ALICE, BOB, 3_000)

    [conflict] = racing.conflicts
    assert (conflict.stream, conflict.expected, conflict.actual) == (ALICE, 2, 3)
    assert racing.calls == 2
    assert out.from_version == 4  # after the other writer's withdrawal
    assert balances(bank_store) == (1_000, 3_000)
    # Decided again on the new balance, a transfer may be refused: nothing is written.
    racing = OtherWriterBeforeEachTransfer(
        bank_store, lambda: teller.handle(ALICE, WithdrawMoney(500)), times=1
    )
    with pytest.raises(InsufficientFunds) as short:
        transfer(CommandHandler(racing, account), ALICE, BOB, 1_000)
    assert short.value.balance == 500
    assert balances(bank_store) == (500, 3_000)


def test_transfer_gives_up_after_its_attempts(bank_store: Any) -> None:
    open_both(bank_store)
    teller = CommandHandler(bank_store, account)
    racing = OtherWriterBeforeEachTransfer(
        bank_store, lambda: teller.handle(BOB, DepositMoney(1)), times=99
    )

    with pytest.raises(WrongExpectedVersion) as lost:
        transfer(CommandHandler(racing, account), ALICE, BOB, 100, attempts=3)

    assert racing.calls == len(racing.conflicts) == 3
    assert lost.value.stream == BOB
    assert balances(bank_store) == (10_000, 3)  # the other writer's deposits only


def test_transfer_with_an_id_is_made_once(bank_store: Any) -> None:
    handler = open_both(bank_store, alice=2_000)
    first = transfer(handler, ALICE, BOB, 2_000, transfer_id="t-42")
    position = bank_store.last_position()

    # A repeat (the answer was lost, say) returns the first results: Alice's
    # balance is 0 now, but the transfer is recognised before it is decided.
    again = transfer(handler, ALICE, BOB, 2_000, transfer_id="t-42")

    assert again == first
    assert bank_store.last_position() == position
    assert balances(bank_store) == (0, 2_000)
    with pytest.raises(InsufficientFunds):
        transfer(handler, ALICE, BOB, 2_000, transfer_id="t-43")
