"""A ledger across a restart: atomic transfers, an outbox, a live follower an operator stops.

The story, on a SQLite file and on PostgreSQL: a bank service opens accounts
with a command handler that snapshots, moves money with atomic two-account
transfers (one retried after a lost answer), and writes an outbox row in its
own database transaction together with an audit event after each transfer. A live
subscriber follows the log in a thread; the operator stops it from the main
thread without closing the store. The service restarts (a new store object
on the same database): snapshots are listed, time travel by version bounds
gives the states the handler gives, the log up to a transfer's first
position ends exactly there, a balance read model rebuilt from the log
agrees with every account, and the outbox holds one row per transfer. A
notifier added then starts "now": it mails nobody about the past, and the
next deposit once.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from eventfold import CommandHandler, RecordedEvent, SqliteEventStore
from eventfold.examples.bank import (
    DepositMoney,
    MoneyDeposited,
    OpenAccount,
    account,
    transfer,
)
from eventfold.projections import Projection, ProjectionRunner
from eventfold.snapshots import SnapshotPolicy
from eventfold.store import EventStore
from eventfold.store.postgres import PostgresEventStore, migrate
from eventfold.testing._support import within_seconds
from tests.support.pg import new_schema_name

ACCOUNTS = ["acc-ann", "acc-bob", "acc-cy"]

# (open a store, open an application connection to its database, the outbox DDL)
Backend = tuple[Callable[[], EventStore], Callable[[], Any], str]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "ledger.db"
        SqliteEventStore(path).close()
        yield (
            lambda: SqliteEventStore(path),
            lambda: sqlite3.connect(path),
            "CREATE TABLE IF NOT EXISTS outbox (position TEXT, topic TEXT)",
        )
        return
    url = request.getfixturevalue("pg_database")
    schema = new_schema_name()
    migrate(url, schema=schema)
    yield (
        lambda: PostgresEventStore(url, schema=schema),
        lambda: psycopg.connect(url),
        f"CREATE TABLE IF NOT EXISTS {schema}.outbox (position text, topic text)",
    )


def outbox_rows(conn: Any, ddl: str) -> list[tuple[str, str]]:
    table = ddl.split("EXISTS ")[1].split(" ", maxsplit=1)[0]
    rows = [(str(p), t) for p, t in conn.execute(f"SELECT position, topic FROM {table}")]
    conn.commit()
    return rows


def test_a_ledger_keeps_its_books_across_a_restart(backend: Backend) -> None:
    open_store, connect, ddl = backend
    table = ddl.split("EXISTS ")[1].split(" ")[0]
    conn = connect()
    conn.execute(ddl)
    conn.commit()
    placeholder = "?" if isinstance(conn, sqlite3.Connection) else "%s"

    # -- release 1: accounts, a live follower, transfers with an outbox --------------------
    store = open_store()
    handler = CommandHandler(store, account, snapshots=SnapshotPolicy(every=2))
    for name in ACCOUNTS:
        handler.handle(name, OpenAccount(owner=name, initial_deposit=100))
    followed: list[RecordedEvent] = []
    stop = threading.Event()

    def follow() -> None:
        for event in store.subscribe(poll_interval=60, stop=stop):
            followed.append(event)

    follower = threading.Thread(target=follow, name="ledger-follower")
    follower.start()
    transfers = []
    for i, (source, target) in enumerate([(0, 1), (1, 2), (2, 0), (0, 2)]):
        done = transfer(handler, ACCOUNTS[source], ACCOUNTS[target], 10 + i)
        # The outbox row and the audit event commit together, in the service's
        # own transaction (on SQLite it holds the write lock: nothing else inside).
        with store.transaction(conn) as tx:
            conn.execute(
                f"INSERT INTO {table} VALUES ({placeholder}, {placeholder})",
                (str(done[0].position), "transfer"),
            )
            tx.append(f"audit-{i}", [MoneyDeposited(amount=10 + i)])
        transfers.append(done)
    # A transfer whose answer was lost, sent again with its id: stored once.
    first = transfer(handler, ACCOUNTS[1], ACCOUNTS[0], 7, transfer_id="t-lost")
    again = transfer(handler, ACCOUNTS[1], ACCOUNTS[0], 7, transfer_id="t-lost")
    assert [r.positions for r in again] == [r.positions for r in first]
    handler.handle(ACCOUNTS[2], DepositMoney(amount=5))
    # The operator stops the follower from another thread; the store stays open.
    last = store.last_position()
    stop.set()
    within_seconds(30, follower.join)
    assert not follower.is_alive()
    assert followed and followed[-1].position <= last
    assert [e.position for e in followed] == [e.position for e in store.read_all()][: len(followed)]
    balances = {name: handler.load(name).state.balance for name in ACCOUNTS}
    assert sum(balances.values()) == 100 * len(ACCOUNTS) + 5
    store.close()

    # -- release 2: the same database, a new store object ------------------------------------
    store = open_store()
    handler = CommandHandler(store, account, snapshots=SnapshotPolicy(every=2))
    assert {name: handler.load(name).state.balance for name in ACCOUNTS} == balances
    for name in ACCOUNTS:
        snapshots = store.list_snapshots(name)
        assert snapshots, name
        assert [s.version for s in snapshots] == sorted(s.version for s in snapshots)
        assert snapshots[-1] == store.load_snapshot(name)
        version = handler.load(name).version
        for upto in range(1, version + 1):
            # The events up to a version, read with the bound, fold to what time travel says.
            events = list(store.read(name, to_version=upto))
            assert [e.version for e in events][-1] == upto
            state = account.initial_state()
            for event in events:
                state = account.evolve(state, event.data)
            assert state == handler.load(name, as_of_version=upto).state
    for done in transfers:
        up_to = list(store.read_all(to_position=done[0].positions[0]))
        assert up_to[-1].position == done[0].positions[0]
        assert all(e.position <= done[0].positions[0] for e in up_to)

    # A balance read model rebuilt from the whole log agrees with every account.
    rebuilt: dict[str, int] = {}

    def fold(ctx: Any, event: RecordedEvent) -> None:
        sign = 1 if isinstance(event.data, MoneyDeposited) else -1
        rebuilt[event.stream] = rebuilt.get(event.stream, 0) + sign * event.data.amount

    runner = ProjectionRunner(
        store,
        Projection(
            "balances",
            fold,
            types=["bank.MoneyDeposited", "bank.MoneyWithdrawn"],
            stream_prefix="acc-",
        ),
    )
    runner.run_once()
    assert rebuilt == balances
    assert runner.status().lag_events == 0
    rows = outbox_rows(conn, ddl)
    assert sorted(rows) == sorted((str(done[0].position), "transfer") for done in transfers)
    assert {e.stream for e in store.read_all(stream_prefix="audit-")} == {
        f"audit-{i}" for i in range(len(transfers))
    }
    # Release 2 adds a notifier that mails account owners: it starts "now", so
    # nobody hears about the past, then every new deposit is mailed once.
    mailed: list[str] = []
    mailer = ProjectionRunner(
        store,
        Projection(
            "mailer",
            lambda ctx, e: mailed.append(e.stream),
            types=["bank.MoneyDeposited"],
            stream_prefix="acc-",
            external=True,
            start_from="now",
        ),
    )
    assert mailer.run_once() == 0
    handler.handle(ACCOUNTS[1], DepositMoney(amount=1))
    assert mailer.run_once() == 1
    assert mailed == [ACCOUNTS[1]]
    store.close()
    conn.close()
