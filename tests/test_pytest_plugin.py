"""eventfold's pytest plugin, run as an application's test suite would run it (pytester)."""

from __future__ import annotations

import psycopg
import pytest

pytest_plugins = ["pytester"]

APP_TESTS = """
from dataclasses import dataclass

from eventfold import CommandHandler, Decider
from eventfold.processes import Dispatch, ProcessManager
from eventfold.projections import Projection
from eventfold.testing import ProcessSpec, ProjectionSpec
from eventfold.testing._events import Deposited, Opened, Withdrawn


def balances_projection(totals):
    def handle(ctx, event):
        totals[event.stream] = totals.get(event.stream, 0) + event.data.amount

    return Projection("balances", handle, types=["eventfold.testing.Deposited"], in_memory=True)


def sql_balances():
    def setup(ctx):
        ctx.execute("CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, n BIGINT)")

    def handle(ctx, event):
        ctx.execute(
            "INSERT INTO balances AS b (account, n) VALUES (?, ?) "
            "ON CONFLICT (account) DO UPDATE SET n = b.n + excluded.n",
            (event.stream, event.data.amount),
        )

    return Projection("sql-balances", handle, types=["eventfold.testing.Deposited"], setup=setup)


def test_stores(eventfold_memory_store, eventfold_sqlite_store):
    for store in (eventfold_memory_store, eventfold_sqlite_store):
        assert store.last_position() == 0
        store.append("a", [Deposited(amount=1)])
        assert [e.data for e in store.read("a")] == [Deposited(amount=1)]


def test_clock(eventfold_clock, eventfold_sqlite_store):
    from datetime import timedelta

    first = eventfold_sqlite_store.append("a", [Deposited(amount=1)])
    eventfold_clock.advance(timedelta(days=2))
    eventfold_sqlite_store.append("a", [Deposited(amount=2)])
    one, two = eventfold_sqlite_store.read("a")
    assert (two.recorded_at - one.recorded_at) >= timedelta(days=2)
    print("IDS", one.id, two.id, one.recorded_at.isoformat(), first.position)


def test_projection_spec_in_memory():
    totals = {}
    spec = ProjectionSpec(balances_projection(totals))
    spec.given("acc-1", Deposited(amount=5), Withdrawn(amount=1), Deposited(amount=7))
    spec.then(lambda: totals == {"acc-1": 12})
    spec.given("acc-2", Deposited(amount=1)).then(lambda: totals["acc-2"] == 1)
    assert spec.handled == 3


def test_projection_spec_on_sql(eventfold_sqlite_store):
    spec = ProjectionSpec(sql_balances(), store=eventfold_sqlite_store)
    spec.given("acc-1", Deposited(amount=5), Deposited(amount=7))
    spec.given("acc-2", Deposited(amount=1))
    rows = [("acc-1", 12), ("acc-2", 1)]
    spec.then_rows("SELECT account, n FROM balances ORDER BY account", rows)


@dataclass(frozen=True)
class Welcome:
    owner: str


greetings = CommandHandler(None, Decider(lambda c, s: [], lambda s, e: s, int))  # not called


def react(event):
    return [Dispatch(greetings, f"welcome-{event.stream}", Welcome(event.data.owner))]


def test_process_spec():
    spec = ProcessSpec(ProcessManager("welcomer", react, types=["eventfold.testing.Opened"]))
    spec.given("acc-1", Opened(owner="ann"), Deposited(amount=1))
    spec.then(("welcome-acc-1", Welcome("ann")))
    spec.given("acc-1", Deposited(amount=2)).then_nothing()


def test_a_failing_then_says_why():
    spec = ProjectionSpec(balances_projection({}))
    spec.given("acc-1", Deposited(amount=5))
    spec.then_rows("SELECT 1", [])
"""


def test_the_fixtures_and_specs_work_in_an_applications_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_app=APP_TESTS)
    result = pytester.runpytest_subprocess("-q", "-s", "-p", "no:randomly")
    result.assert_outcomes(passed=5, failed=1)
    # The one failure is the spec's own, readable message (a memory store runs no SQL).
    result.stdout.fnmatch_lines(["*test_a_failing_then_says_why*", "*no SQL database*"])


def test_the_clock_gives_the_same_ids_and_times_on_every_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_app=APP_TESTS)
    runs = []
    for _ in range(2):
        result = pytester.runpytest_subprocess("-q", "-s", "-k", "test_clock")
        result.assert_outcomes(passed=1)
        (line,) = [line for line in result.outlines if line.startswith("IDS")]
        runs.append(line)
    assert runs[0] == runs[1]
    assert "2026-01-01T00:00:00" in runs[0]  # the clock's default start


POSTGRES_TEST = """
def test_postgres(eventfold_postgres_store):
    from eventfold.testing._events import Deposited

    eventfold_postgres_store.append("a", [Deposited(amount=1)])
    print("SCHEMA", eventfold_postgres_store.schema)
    assert eventfold_postgres_store.last_position() > 0
"""


def _schemas(conninfo: str) -> set[str]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'eventfold_test_%'"
        ).fetchall()
    return {row[0] for row in rows}


def test_the_postgres_store_has_its_own_schema_dropped_afterwards(
    pytester: pytest.Pytester, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_pg=POSTGRES_TEST)
    monkeypatch.setenv("EVENTFOLD_TEST_POSTGRES", pg_database)
    before = _schemas(pg_database)
    result = pytester.runpytest_subprocess("-q", "-s")
    result.assert_outcomes(passed=1)
    (line,) = [line for line in result.outlines if "SCHEMA" in line]
    schema = line.split("SCHEMA ")[1].strip().split()[0]
    assert schema.startswith("eventfold_test_")
    assert _schemas(pg_database) == before  # dropped


def test_without_a_postgres_server_the_test_skips_and_in_ci_it_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_pg=POSTGRES_TEST)
    monkeypatch.delenv("EVENTFOLD_TEST_POSTGRES", raising=False)
    monkeypatch.delenv("CI", raising=False)
    result = pytester.runpytest_subprocess("-q", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*EVENTFOLD_TEST_POSTGRES*"])
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(errors=1)  # the fixture fails: an error, not a skip
    # A server that does not answer: the same, naming it.
    monkeypatch.delenv("CI")
    result = pytester.runpytest_subprocess(
        "-q", "-rs", "--eventfold-postgres", "host=127.0.0.1 port=1 connect_timeout=2"
    )
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*unavailable*"])
