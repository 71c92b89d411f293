"""Scenario: a subscriber and a projection runner follow the log while every connection is cut.

Both read through a TCP proxy (tests/proxy.py) that cuts all their
connections (pooled and LISTEN) three times while they wait for news, then
loses the reply to an append after its commit. Between cuts a writer beside
the proxy appends. In the end the subscriber has seen every event once, in
log order, and the projection's SQL read model holds every event once; the
append whose reply was lost was re-sent with the same NewEvent and stored once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from eventfold import NewEvent, RecordedEvent, StoreUnavailable
from eventfold.projections import Projection, ProjectionContext, ProjectionRunner
from eventfold.store.postgres import PostgresEventStore, migrate
from eventfold.testing._events import Deposited, Opened
from tests.support.pg import new_schema_name
from tests.support.proxy import TcpProxy

GUARD = 30.0
PHASES = 4
PER_PHASE = 15


def listening(admin: psycopg.Connection[Any]) -> int:
    """How many sessions of this database LISTEN now (only the followers do)."""
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND state = 'idle' AND query LIKE '%%LISTEN%%' AND pid <> pg_backend_pid()"
    ).fetchone()
    return int(row[0]) if row is not None else 0


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD
    while not condition():
        assert time.monotonic() < deadline, f"not within {GUARD:g} s: {what}"
        time.sleep(0.01)


def test_followers_resume_after_cuts_and_see_every_event_once(pg_database: str) -> None:
    schema = new_schema_name()
    migrate(pg_database, schema=schema)
    table = sql.Identifier(schema, "ledger")
    received: list[RecordedEvent] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def setup(ctx: ProjectionContext) -> None:
        ctx.connection.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} (event_id uuid, position numeric)").format(table)
        )

    def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
        ctx.connection.execute(
            sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(table), (event.id, event.position)
        )

    with (
        TcpProxy.to(pg_database) as proxy,
        PostgresEventStore(proxy.conninfo(pg_database), schema=schema, connect_timeout=2) as store,
        PostgresEventStore(pg_database, schema=schema) as writer,
        psycopg.connect(pg_database, autocommit=True) as admin,
    ):
        projection = Projection("ledger", handle, setup=setup, batch_size=7)
        runner = ProjectionRunner(store, projection, poll_interval=0.5)
        subscription = store.subscribe(poll_interval=0.5)

        def run(body: Callable[[], Any]) -> threading.Thread:
            def guarded() -> None:
                try:
                    body()
                except BaseException as exc:
                    failures.append(exc)

            thread = threading.Thread(target=guarded, daemon=True)
            thread.start()
            return thread

        def follow() -> None:
            for event in subscription:
                received.append(event)
                if stop.is_set():
                    return

        following = run(follow)
        running = run(lambda: runner.run(stop))

        def caught_up() -> bool:
            assert not failures, failures
            head = writer.last_position()
            return bool(received) and received[-1].position == head and runner.position == head

        cuts = 0
        for phase in range(PHASES):
            for n in range(PER_PHASE):
                writer.append(f"acc-{n % 5}", [Deposited(amount=phase * 100 + n)])
            _until(caught_up, f"both followers caught up in phase {phase}")
            if phase < PHASES - 1:
                _until(lambda: listening(admin) == 2, "both followers LISTEN")
                cuts += proxy.cut()  # while both wait for news
        # An append through the proxy whose reply is lost after the commit.
        event = NewEvent(data=Opened(owner="lost-reply"))
        proxy.lose_reply(b"lost-reply")
        with pytest.raises(StoreUnavailable) as info:
            store.append("acc-lost", [event])
        assert info.value.outcome_unknown
        deadline = time.monotonic() + GUARD
        while True:
            try:
                resent = store.append("acc-lost", [event])
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline
        assert resent.to_version == 1
        _until(caught_up, "both followers saw the re-sent append")
        stop.set()
        writer.append("acc-end", [Deposited(amount=0)])  # wakes the subscriber to stop
        following.join(GUARD)
        running.join(GUARD)
        subscription.close()
        assert not failures, failures
        assert not following.is_alive() and not running.is_alive()
        log = [e for e in writer.read_all() if e.stream != "acc-end"]
        rows = admin.execute(sql.SQL("SELECT event_id FROM {}").format(table)).fetchall()

    assert cuts >= 3 * 2  # each cut closed both LISTEN connections, at least
    assert len(log) == PHASES * PER_PHASE + 1
    delivered = [e.id for e in received if e.stream != "acc-end"]
    ids = [e.id for e in log]
    assert not [i for i in set(delivered) if delivered.count(i) > 1], "subscriber duplicates"
    assert set(delivered) == set(ids), "subscriber missed or invented"
    assert delivered == ids
    projected = [row[0] for row in rows if row[0] in set(ids)]  # "acc-end" or not
    assert not [i for i in set(projected) if projected.count(i) > 1], "read model duplicates"
    assert sorted(projected) == sorted(ids)  # each event once, none missing
    assert [e.id for e in log].count(event.id) == 1
