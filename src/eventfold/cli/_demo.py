"""``eventfold demo``: the article's bank accounts, narrated step by step on SQLite."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import assert_never

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from eventfold import (
    ANY,
    AppendResult,
    CommandHandler,
    Expected,
    SqliteEventStore,
    WrongExpectedVersion,
)
from eventfold.cli._render import dollars, history_table
from eventfold.examples import bank

__all__ = ["ALICE", "BOB", "DemoError", "run_demo"]

ALICE = "account-alice"
BOB = "account-bob"

Teller = CommandHandler[bank.AccountState, bank.BankCommand]


class DemoError(Exception):
    """The demo cannot run (for instance, its file already holds events)."""


class _InterruptedStore(SqliteEventStore):
    """A store on which another writer commits just before our first append.

    Real races depend on timing; this one makes the lost-update situation
    happen every time, so the handler's retry can be shown.
    """

    def __init__(self, path: str | os.PathLike[str], interruption: Callable[[], object]) -> None:
        super().__init__(path)
        self._interruption: Callable[[], object] | None = interruption
        self.conflicts: list[WrongExpectedVersion] = []

    def append(
        self, stream: str, events: Sequence[object], *, expected: Expected = ANY
    ) -> AppendResult:
        """Let the other writer commit (first call only), then append."""
        if self._interruption is not None:
            interruption, self._interruption = self._interruption, None
            interruption()
        try:
            return super().append(stream, events, expected=expected)
        except WrongExpectedVersion as exc:
            self.conflicts.append(exc)
            raise


def run_demo(path: Path, console: Console) -> None:
    """Run the bank scenario on a new SQLite file at ``path``, narrating it on ``console``."""
    with SqliteEventStore(path) as store:
        if store.last_position():
            raise DemoError(f"{path} already holds events; give the demo a new file")
        console.print("[bold]eventfold demo[/]: bank accounts, amounts stored in cents")
        console.print(f"SQLite file: {escape(str(path))}\n", soft_wrap=True)
        teller: Teller = CommandHandler(store, bank.account)
        _open_accounts(console, teller)
        _rejected_withdrawal(console, store, teller)
        final = _concurrent_update(console, path, teller)
        _replay(console, path, final)
        _correction(console, store, teller)
        console.print()
        console.print(history_table(ALICE, store.read(ALICE)))
    console.print("\nExplore the file:")
    for args in ("streams", f"show {BOB}"):
        console.print(f"  eventfold {args} --db {escape(str(path))}", soft_wrap=True)


def _describe(command: bank.BankCommand) -> str:
    match command:
        case bank.OpenAccount(owner=owner, initial_deposit=initial):
            return f'OpenAccount("{owner}", {dollars(initial)})'
        case bank.DepositMoney(amount=amount):
            return f"DepositMoney({dollars(amount)})"
        case bank.WithdrawMoney(amount=amount):
            return f"WithdrawMoney({dollars(amount)})"
        case bank.ReverseDeposit(amount=amount):
            return f"ReverseDeposit({dollars(amount)})"
        case _:
            assert_never(command)


def _open_accounts(console: Console, teller: Teller) -> None:
    console.print("[bold]1. Commands are decided into events and appended[/]")
    table = Table(box=None)
    table.add_column("stream", no_wrap=True)
    table.add_column("command", no_wrap=True)
    table.add_column("events written")
    table.add_column("version", justify="right")
    table.add_column("balance", justify="right")
    commands: list[tuple[str, bank.BankCommand]] = [
        (ALICE, bank.OpenAccount("Alice", 10_000)),
        (BOB, bank.OpenAccount("Bob", 5_000)),
        (ALICE, bank.DepositMoney(5_000)),
        (ALICE, bank.WithdrawMoney(2_000)),
    ]
    for stream, command in commands:
        result = teller.handle(stream, command)
        written = ", ".join(type(event).__name__ for event in result.events)
        table.add_row(
            stream, _describe(command), written, str(result.version), dollars(result.state.balance)
        )
    console.print(table)


def _rejected_withdrawal(console: Console, store: SqliteEventStore, teller: Teller) -> None:
    console.print("\n[bold]2. A rejected command writes nothing[/]")
    command = bank.WithdrawMoney(10_000)
    before = teller.load(BOB)
    try:
        teller.handle(BOB, command)
    except bank.InsufficientFunds as exc:
        rejection = exc
    else:
        raise DemoError("the overdraft was not rejected")
    after = store.get_stream(BOB)
    version = after.version if after else 0
    outcome = "nothing was written" if version == before.version else "EVENTS WERE WRITTEN"
    console.print(f"   {BOB} ({dollars(before.state.balance)}) <- {_describe(command)}")
    console.print(f"   rejected: InsufficientFunds: {escape(str(rejection))}")
    console.print(f"   stream version before: {before.version}, after: {version}: {outcome}")


def _concurrent_update(console: Console, path: Path, teller: Teller) -> bank.AccountState:
    console.print("\n[bold]3. Two tellers, one account: optimistic concurrency[/]")
    start = teller.load(ALICE)
    deposit, withdrawal = bank.DepositMoney(2_500), bank.WithdrawMoney(3_000)
    # (version teller 2 loaded, version it wrote), filled while teller 1 is mid-command.
    second: list[tuple[int, int]] = []
    with SqliteEventStore(path) as store_2:
        teller_2: Teller = CommandHandler(store_2, bank.account)

        def teller_2_deposits() -> None:
            done = teller_2.handle(ALICE, deposit)
            second.append((done.version - len(done.events), done.version))

        with _InterruptedStore(path, teller_2_deposits) as store_1:
            teller_1: Teller = CommandHandler(store_1, bank.account)
            result = teller_1.handle(ALICE, withdrawal)
    if not store_1.conflicts:
        raise DemoError("the two tellers did not conflict")
    conflict, (loaded_by_2, written_by_2) = store_1.conflicts[0], second[0]
    lines = [
        f"teller 1 loads {ALICE} at version {conflict.expected}, decides {_describe(withdrawal)}",
        f"teller 2 loads version {loaded_by_2} too, decides {_describe(deposit)}",
        f"teller 2 appends first (expected={loaded_by_2}) -> version {written_by_2}",
        f"teller 1 appends with expected={conflict.expected} -> WrongExpectedVersion:",
        f"  {escape(str(conflict))}",
        f"teller 1's handler reloads version {conflict.actual}, decides again -> "
        f"version {result.version}",
        f"balance {dollars(result.state.balance)} = {dollars(start.state.balance)} "
        f"+ {dollars(deposit.amount)} - {dollars(withdrawal.amount)}: no update lost",
    ]
    for line in lines:
        console.print(f"   {line}")
    return result.state


def _replay(console: Console, path: Path, handled: bank.AccountState) -> None:
    console.print("\n[bold]4. Replay: state is a fold of the events[/]")
    with SqliteEventStore(path) as fresh:
        events = [recorded.data for recorded in fresh.read(ALICE)]
    replayed = bank.account.fold(events)
    verdict = "equals" if replayed == handled else "DIFFERS FROM"
    console.print(f"   {len(events)} events of {ALICE} read on a new connection, folded:")
    console.print(f"   {escape(repr(replayed))}")
    console.print(
        f"   balance {dollars(replayed.balance)} {verdict} the handler's {dollars(handled.balance)}"
    )


def _correction(console: Console, store: SqliteEventStore, teller: Teller) -> None:
    console.print("\n[bold]5. Corrections are new events: history is never edited[/]")
    mistaken = teller.handle(BOB, bank.DepositMoney(99_900))
    (recorded,) = store.read(BOB, from_version=mistaken.version)
    console.print(
        f"   {_describe(bank.DepositMoney(99_900))} was a typo -> version {mistaken.version}, "
        f"balance {dollars(mistaken.state.balance)}"
    )
    fixed = bank.reverse_deposit(teller, BOB, recorded.id, reason="typo in amount")
    again = bank.reverse_deposit(teller, BOB, recorded.id, reason="typo in amount")
    console.print(
        f"   reverse_deposit -> DepositReversed, version {fixed.version}, "
        f"balance {dollars(fixed.state.balance)}"
    )
    console.print("   the mistaken deposit stays in history, the reversal names it")
    console.print(f"   asked twice: replayed={again.replayed}, still version {again.version}")
