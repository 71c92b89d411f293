"""A ledger keeps running beside a batch job, a stuck client and its own open transactions.

The story, on PostgreSQL (SQLite has one writer at a time: a batch job there
blocks appends, which the SQLite scenarios cover): a bank service runs its
balances as a SQL read model, followed live by a projection runner in a
thread. Then, all left open: a nightly batch job writes a report table in the
store's own database, a client in another database of the server forgets its
transaction, and a prepared transaction that never appended waits for a
coordinator. Meanwhile the service opens accounts, moves money with atomic
transfers, and in its own transaction writes a report row, then (after the
transfer has committed) an audit event and an outbox row. The runner keeps
up all along, and nothing names a holdup once the service's transactions
end. Then the service holds one of its own transactions open after
appending: the runner waits for it, its status names that transaction, and
it catches up when it commits. Last, after the batch job commits, a read model rebuilt from the
whole log equals the live one, and every audit event comes after the
transfer its outbox row names.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from eventfold import CommandHandler, RecordedEvent
from eventfold.examples.bank import MoneyDeposited, OpenAccount, account, transfer
from eventfold.projections import Projection, ProjectionRunner
from eventfold.store.postgres import PostgresEventStore, migrate
from tests.support.pg import ADMIN_URL, new_schema_name

ACCOUNTS = ["acc-ann", "acc-bob", "acc-cy"]


@pytest.fixture
def store(pg_database: str) -> Iterator[PostgresEventStore]:
    schema = new_schema_name()
    migrate(pg_database, schema=schema)
    with PostgresEventStore(pg_database, schema=schema) as store:
        yield store


def balances_projection(table: str) -> Projection:
    def setup(ctx: Any) -> None:
        ctx.execute(f"CREATE TABLE IF NOT EXISTS {table} (stream text PRIMARY KEY, cents bigint)")

    def fold(ctx: Any, event: RecordedEvent) -> None:
        sign = 1 if isinstance(event.data, MoneyDeposited) else -1
        ctx.execute(
            f"INSERT INTO {table} VALUES (?, ?) ON CONFLICT (stream) "
            f"DO UPDATE SET cents = {table}.cents + excluded.cents",
            (event.stream, sign * event.data.amount),
        )

    return Projection(
        table.rsplit(".", 1)[-1],
        fold,
        types=["bank.MoneyDeposited", "bank.MoneyWithdrawn"],
        stream_prefix="acc-",
        setup=setup,
    )


def read_model(url: str, table: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute(f"SELECT stream, cents FROM {table}").fetchall())


def wait_until_caught_up(runner: ProjectionRunner, position: int) -> None:
    """Wait (at most 30 s) for the live runner to pass ``position``."""
    passed = threading.Event()
    for _ in range(3000):
        if runner.status().position >= position:
            return
        passed.wait(0.01)
    raise AssertionError(f"the runner is at {runner.status()} after 30 s, not past {position}")


def test_the_ledger_runs_beside_a_batch_job_and_a_stuck_client(
    store: PostgresEventStore, pg_database: str
) -> None:
    schema = store.schema
    live = f"{schema}.balances"
    runner = ProjectionRunner(store, balances_projection(live), poll_interval=60)
    stop = threading.Event()
    worker = threading.Thread(target=runner.run_forever, args=(stop,), name="balances")
    worker.start()
    handler = CommandHandler(store, account)
    opened: list[psycopg.Connection] = []
    gid = f"eventfold-scenario-{os.getpid()}"
    with psycopg.connect(pg_database) as conn:
        if conn.execute("SHOW max_prepared_transactions").fetchone() == ("0",):
            message = "the server has prepared transactions off (max_prepared_transactions)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
    try:
        # -- left open: a batch job, a forgotten client, an unfinished two-phase commit --
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {schema}.report (day int, total bigint)")
        batch_job = psycopg.connect(pg_database, application_name="nightly-report")
        batch_job.execute(f"INSERT INTO {schema}.report VALUES (1, 0)")
        forgotten = psycopg.connect(ADMIN_URL, application_name="forgotten")
        forgotten.execute("CREATE TEMP TABLE scratch (a int)")
        forgotten.execute("INSERT INTO scratch VALUES (1)")
        opened += [batch_job, forgotten]
        with psycopg.connect(pg_database) as coordinator:
            coordinator.execute(f"INSERT INTO {schema}.report VALUES (2, 0)")
            coordinator.execute(f"PREPARE TRANSACTION '{gid}'")

        # -- the service works; the runner keeps up -------------------------------------------
        for name in ACCOUNTS:
            handler.handle(name, OpenAccount(owner=name, initial_deposit=100))
        wait_until_caught_up(runner, store.last_position())
        service = psycopg.connect(pg_database, application_name="ledger")
        opened.append(service)
        outbox = f"{schema}.outbox"
        service.execute(f"CREATE TABLE {outbox} (position numeric, topic text)")
        service.commit()
        audits = []
        for i, (source, target) in enumerate([(0, 1), (1, 2), (2, 0)]):
            with store.transaction(service) as tx:
                # Its first write: from here readers wait for it (it may append).
                service.execute(f"INSERT INTO {schema}.report VALUES (%s, 0)", (10 + i,))
                done = transfer(handler, ACCOUNTS[source], ACCOUNTS[target], 10 + i)
                audit = tx.append(f"audit-{i}", [MoneyDeposited(amount=10 + i)])
                service.execute(
                    f"INSERT INTO {outbox} VALUES (%s, 'transfer')", (done[0].position,)
                )
            audits.append((done, audit))
            wait_until_caught_up(runner, audit.position)
            status = runner.status()
            assert (status.lag_events, status.held_back_by) == (0, ())
        assert store.holdups() == []
        assert read_model(pg_database, live) == {
            name: handler.load(name).state.balance for name in ACCOUNTS
        }

        # -- one of its own transactions stays open after appending: now readers wait --
        with store.transaction(service) as tx:
            pending = tx.append("audit-open", [MoneyDeposited(amount=1)])
            later = transfer(handler, ACCOUNTS[0], ACCOUNTS[1], 1)
            (holdup,) = store.holdups()
            assert (holdup.pid, holdup.application_name) == (service.info.backend_pid, "ledger")
            for _ in range(3000):
                status = runner.status()
                if status.lag_events == 2 and status.held_back_by:
                    break
                stop.wait(0.01)
            assert status.lag_events == 2  # the transfer, committed, behind the open one
            assert [h.pid for h in status.held_back_by] == [holdup.pid]
        wait_until_caught_up(runner, later[-1].position)
        assert pending.position < later[0].position
    finally:
        stop.set()
        worker.join(30)
        for conn in opened:
            conn.rollback()
            conn.close()
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(f"ROLLBACK PREPARED '{gid}'")
    assert not worker.is_alive()

    # -- the batch job has ended: a rebuild from the whole log agrees ----------------------
    rebuilt = f"{schema}.balances_rebuilt"
    ProjectionRunner(store, balances_projection(rebuilt)).run_once()
    expected = {name: handler.load(name).state.balance for name in ACCOUNTS}
    assert read_model(pg_database, live) == read_model(pg_database, rebuilt) == expected
    log = [e.position for e in store.read_all()]
    assert log == sorted(log)
    for done, audit in audits:
        assert max(done[0].position, done[1].position) < audit.position
