"""The ``eventfold`` command line: demo, streams and show, in-process and as a subprocess."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import pytest
from typer.testing import CliRunner

from eventfold import Serializer, SqliteEventStore, TypeRegistry
from eventfold.cli import INSTALL_HINT, main
from eventfold.cli._app import app
from eventfold.store.postgres import LATEST_SCHEMA_VERSION, PostgresEventStore
from eventfold.store.sqlite._db import SQL as SQLITE_SQL
from eventfold.testing._events import Deposited
from tests.support.mounts import read_only_view
from tests.support.pg import free_loopback_port, new_schema_name

runner = CliRunner()

ALICE_HISTORY = [
    (1, "bank.AccountOpened", {"owner": "Alice"}),
    (2, "bank.MoneyDeposited", {"amount": 10_000}),
    (3, "bank.MoneyDeposited", {"amount": 5_000}),
    (4, "bank.MoneyWithdrawn", {"amount": 2_000}),
    (5, "bank.MoneyDeposited", {"amount": 2_500}),
    (6, "bank.MoneyWithdrawn", {"amount": 3_000}),
]
BOB_HISTORY = [
    (1, "bank.AccountOpened", {"owner": "Bob"}),
    (2, "bank.MoneyDeposited", {"amount": 5_000}),
    (3, "bank.MoneyDeposited", {"amount": 99_900}),
    (4, "bank.DepositReversed", {"amount": 99_900, "reason": "typo in amount"}),
]


def history(path: Path, stream: str) -> list[tuple[int, str, dict[str, Any]]]:
    """A stream's (version, type, payload) as stored, without the demo's classes."""
    raw = Serializer(TypeRegistry(), on_unknown="raw")
    with SqliteEventStore(path, serializer=raw) as store:
        return [(event.version, event.type, dict(event.data)) for event in store.read(stream)]


def balance(events: list[tuple[int, str, dict[str, Any]]]) -> int:
    signs = {"bank.MoneyDeposited": 1, "bank.MoneyWithdrawn": -1, "bank.DepositReversed": -1}
    return sum(signs.get(kind, 0) * data.get("amount", 0) for _, kind, data in events)


def table_rows(output: str) -> list[list[str]]:
    """The cells of the rows of rich tables drawn with vertical bars."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.lstrip().startswith("│")
    ]


@pytest.fixture
def demo_run(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "bank.db"
    result = runner.invoke(app, ["demo", "--db", str(path)])
    assert result.exit_code == 0, result.output
    return path, result.stdout


# -- demo -----------------------------------------------------------------------------


def test_demo_writes_the_bank_scenario(demo_run: tuple[Path, str]) -> None:
    path, _ = demo_run
    alice, bob = history(path, "account-alice"), history(path, "account-bob")
    assert alice == ALICE_HISTORY
    # The rejected overdraft wrote nothing; the mistaken deposit is compensated.
    assert bob == BOB_HISTORY
    assert (balance(alice), balance(bob)) == (12_500, 5_000)


def test_demo_narrates_each_step(demo_run: tuple[Path, str]) -> None:
    _, output = demo_run
    expected_in_order = [
        "1. Commands are decided into events and appended",
        "2. A rejected command writes nothing",
        "account-bob ($50.00) <- WithdrawMoney($100.00)",
        "rejected: InsufficientFunds: balance is 5000 cents, cannot withdraw 10000",
        "stream version before: 2, after: 2: nothing was written",
        "3. Two tellers, one account: optimistic concurrency",
        "teller 2 appends first (expected=4) -> version 5",
        "teller 1 appends with expected=4 -> WrongExpectedVersion:",
        "stream 'account-alice': expected version 4, but the stream is at 5",
        "teller 1's handler reloads version 5, decides again -> version 6",
        "balance $125.00 = $130.00 + $25.00 - $30.00: no update lost",
        "4. Replay: state is a fold of the events",
        "6 events of account-alice read on a new connection, folded:",
        "AccountState(owner='Alice', balance=12500)",
        "balance $125.00 equals the handler's $125.00",
        "5. Corrections are new events: history is never edited",
        "DepositMoney($999.00) was a typo -> version 3, balance $1,049.00",
        "reverse_deposit -> DepositReversed, version 4, balance $50.00",
        "asked twice: replayed=True, still version 4",
        "history of account-alice",
    ]
    positions = [output.find(text) for text in expected_in_order]
    missing = [text for text, at in zip(expected_in_order, positions, strict=True) if at < 0]
    assert missing == []
    assert positions == sorted(positions)
    history_rows = [row for row in table_rows(output) if row[0].isdigit()]
    assert [(int(row[0]), row[1], msgspec.json.decode(row[2])) for row in history_rows] == (
        ALICE_HISTORY
    )
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z", r[3]) for r in history_rows)


def test_demo_first_step_shows_versions_and_balances(demo_run: tuple[Path, str]) -> None:
    _, output = demo_run
    step = output[output.index("1. Commands") : output.index("2. A rejected")]
    rows = [line.split() for line in step.splitlines() if line.strip().startswith("account-")]
    assert [(row[0], row[-2], row[-1]) for row in rows] == [
        ("account-alice", "2", "$100.00"),
        ("account-bob", "2", "$50.00"),
        ("account-alice", "3", "$150.00"),
        ("account-alice", "4", "$130.00"),
    ]


def test_demo_refuses_a_file_that_holds_events(demo_run: tuple[Path, str]) -> None:
    path, _ = demo_run
    again = runner.invoke(app, ["demo", "--db", str(path)])
    assert again.exit_code == 1
    assert "already holds events" in again.stderr
    assert again.stdout == ""
    assert history(path, "account-alice") == ALICE_HISTORY


def test_demo_defaults_to_a_new_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    first = runner.invoke(app, ["demo"])
    second = runner.invoke(app, ["demo"])
    assert (first.exit_code, second.exit_code) == (0, 0), first.output + second.output
    files = sorted(tmp_path.glob("eventfold-demo-*/bank.db"))
    assert len(files) == 2
    for path in files:
        assert f"eventfold show account-bob --db {path}" in first.stdout + second.stdout
        assert history(path, "account-bob") == BOB_HISTORY


def test_demo_as_a_module_in_a_subprocess(tmp_path: Path) -> None:
    path = tmp_path / "bank.db"
    done = subprocess.run(
        [sys.executable, "-m", "eventfold.cli", "demo", "--db", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "stream version before: 2, after: 2: nothing was written" in done.stdout
    assert "WrongExpectedVersion" in done.stdout
    assert done.stderr == ""
    assert history(path, "account-alice") == ALICE_HISTORY
    assert history(path, "account-bob") == BOB_HISTORY


# -- streams and show -------------------------------------------------------------------


def test_streams_lists_each_stream_with_its_version(demo_run: tuple[Path, str]) -> None:
    path, _ = demo_run
    result = runner.invoke(app, ["streams", "--db", str(path)])
    assert result.exit_code == 0, result.output
    rows = [row[:3] for row in table_rows(result.stdout)]
    assert rows == [
        ["account-alice", "6", "bank.MoneyWithdrawn"],
        ["account-bob", "4", "bank.DepositReversed"],
    ]
    assert "2 streams, 10 events" in result.stdout


def test_streams_of_an_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    SqliteEventStore(path).close()
    result = runner.invoke(app, ["streams", "--db", str(path)])
    assert result.exit_code == 0, result.output
    assert "no events in" in result.stdout
    assert table_rows(result.stdout) == []


def test_show_prints_a_streams_history(demo_run: tuple[Path, str]) -> None:
    path, _ = demo_run
    result = runner.invoke(app, ["show", "account-bob", "--db", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "history of account-bob" in result.stdout
    rows = table_rows(result.stdout)
    assert [(int(r[0]), r[1], msgspec.json.decode(r[2])) for r in rows] == BOB_HISTORY


def test_show_needs_no_event_classes_and_prints_payloads_verbatim(tmp_path: Path) -> None:
    class ItemAdded(msgspec.Struct, frozen=True):
        sku: str
        tags: list[str]

    registry = TypeRegistry()
    registry.register(ItemAdded, name="shop.ItemAdded")
    path = tmp_path / "shop.db"
    with SqliteEventStore(path, serializer=Serializer(registry)) as store:
        store.append("cart-1", [ItemAdded("[b]x", ["[red]"])])

    # A wide terminal keeps the payload on one line of the table.
    result = runner.invoke(app, ["show", "cart-1", "--db", str(path)], env={"COLUMNS": "120"})

    assert result.exit_code == 0, result.output
    [row] = table_rows(result.stdout)
    assert row[:3] == ["1", "shop.ItemAdded", '{"sku":"[b]x","tags":["[red]"]}']


def test_show_of_an_unknown_stream_fails(demo_run: tuple[Path, str]) -> None:
    path, _ = demo_run
    result = runner.invoke(app, ["show", "account-carol", "--db", str(path)])
    assert result.exit_code == 1
    assert "stream 'account-carol' has no events" in result.stderr


def test_browsing_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    for args in (["streams"], ["show", "account-bob"]):
        result = runner.invoke(app, [*args, "--db", str(missing)])
        assert result.exit_code == 2
        assert "does not exist" in result.output
    assert not missing.exists()


def test_browsing_a_file_that_is_not_sqlite_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database\n" * 100)
    result = runner.invoke(app, ["streams", "--db", str(path)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error:")
    assert "Traceback" not in result.output


def test_browsing_commands_read_a_file_on_a_read_only_mount(
    demo_run: tuple[Path, str], tmp_path: Path
) -> None:
    path, _ = demo_run
    backups = tmp_path / "backups"
    backups.mkdir()
    shutil.copy(path, backups / "bank.db")  # the demo closed it: no -wal to copy
    with read_only_view(backups, tmp_path / "mnt") as mounted:
        db = str(mounted / "bank.db")
        streams = runner.invoke(app, ["streams", "--db", db])
        assert streams.exit_code == 0, streams.output
        assert "2 streams, 10 events" in streams.stdout
        show = runner.invoke(app, ["show", "account-bob", "--db", db])
        assert show.exit_code == 0, show.output
        status = runner.invoke(app, ["projections", "status", "--db", db])
        assert status.exit_code == 0, status.output


def test_browsing_never_migrates_an_older_file(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        for statement in SQLITE_SQL["migration_1"].split(";\n"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("PRAGMA user_version=1")
    conn.close()
    before = path.read_bytes()
    for args in (["streams"], ["show", "s"], ["projections", "status"]):
        result = runner.invoke(app, [*args, "--db", str(path)])
        assert result.exit_code == 1, result.output
        assert "schema version 1" in result.stderr
        assert "without read_only=True to migrate" in result.stderr
    assert path.read_bytes() == before


def test_help_lists_the_subcommands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "streams", "show"):
        assert re.search(rf"│ {command}\s", result.stdout), command


# -- the optional extra ---------------------------------------------------------------


def test_main_without_typer_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delitem(sys.modules, "eventfold.cli._app")
    monkeypatch.setitem(sys.modules, "typer", None)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    assert INSTALL_HINT == "install eventfold[cli]: pip install 'eventfold[cli]'"
    assert INSTALL_HINT in capsys.readouterr().err


def test_importing_eventfold_does_not_import_the_cli_dependencies() -> None:
    code = (
        "import sys, eventfold, eventfold.cli\n"
        "print(sorted(m for m in ('typer', 'rich', 'click') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


# -- PostgreSQL and maintenance ------------------------------------------------------------


def test_migrate_then_browse_a_postgres_store(pg_database: str) -> None:
    schema = new_schema_name()
    first = runner.invoke(app, ["migrate", "--postgres", pg_database, "--schema", schema])
    again = runner.invoke(app, ["migrate", "--postgres", pg_database, "--schema", schema])
    assert first.exit_code == 0, first.output
    assert again.exit_code == 0, again.output
    assert f"schema {schema} is at eventfold schema version {LATEST_SCHEMA_VERSION}" in again.stdout
    with PostgresEventStore(pg_database, schema=schema) as store:
        store.append("order-1", [Deposited(amount=5), Deposited(amount=6)])
    listed = runner.invoke(
        app, ["streams", "--postgres", pg_database, "--schema", schema], env={"COLUMNS": "200"}
    )
    assert listed.exit_code == 0, listed.output
    assert [row[:3] for row in table_rows(listed.stdout)] == [
        ["order-1", "2", "eventfold.testing.Deposited"]
    ]
    shown = runner.invoke(
        app,
        ["show", "order-1", "--postgres", pg_database, "--schema", schema],
        env={"COLUMNS": "200"},
    )
    assert [msgspec.json.decode(r[2]) for r in table_rows(shown.stdout)] == [
        {"amount": 5},
        {"amount": 6},
    ]


def test_migrate_reports_an_unreachable_server() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_loopback_port()}/test"
    result = runner.invoke(app, ["migrate", "--postgres", url])
    assert result.exit_code == 1
    assert "error:" in result.stderr


def test_a_store_must_be_named_once(tmp_path: Path) -> None:
    result = runner.invoke(app, ["streams"])
    assert result.exit_code == 1
    assert "--db PATH" in result.stderr


def test_snapshots_prune_deletes_only_stale_ones(tmp_path: Path) -> None:
    path = tmp_path / "snap.db"
    with SqliteEventStore(path) as store:
        store.save_snapshot("a", 1, "Account", 1, b"{}")
        store.save_snapshot("a", 2, "Account", 2, b"{}")
        store.save_snapshot("b", 1, "Other", 1, b"{}")
    result = runner.invoke(
        app,
        [
            "snapshots",
            "prune",
            "--db",
            str(path),
            "--state-type",
            "Account",
            "--keep-schema-version",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "deleted 1 snapshots" in result.stdout
    with SqliteEventStore(path) as store:
        kept = store.load_snapshot("a")
        assert kept is not None and kept.schema_version == 2
        assert store.load_snapshot("a", max_version=1) is None
        assert store.load_snapshot("b") is not None


def test_projections_run_with_progress_then_status(tmp_path: Path) -> None:
    path = tmp_path / "proj.db"
    with SqliteEventStore(path) as store:
        for i in range(45):
            store.append(f"s-{i % 3}", [Deposited(amount=i)])
    empty = runner.invoke(app, ["projections", "status", "--db", str(path)])
    assert "no projections have run" in empty.stdout
    ran = runner.invoke(
        app, ["projections", "run", "tests.support.cli_projection:counts", "--db", str(path)]
    )
    assert ran.exit_code == 0, ran.output
    assert "cli-counts: 45 events handled" in ran.stdout
    again = runner.invoke(
        app,
        [
            "projections",
            "run",
            "tests.support.cli_projection:counts",
            "--db",
            str(path),
            "--rebuild",
        ],
    )
    assert "cli-counts: 45 events handled" in again.stdout
    with SqliteEventStore(path) as store:
        counts = dict(store._db.connection().execute("SELECT stream, n FROM cli_counts").fetchall())
    assert counts == {"s-0": 15, "s-1": 15, "s-2": 15}
    status = runner.invoke(
        app, ["projections", "status", "--db", str(path)], env={"COLUMNS": "200"}
    )
    rows = table_rows(status.stdout)
    assert [row[:3] for row in rows] == [["cli-counts", "45", "0"]]
    assert rows[0][4:] == ["0", "no"]


def test_projections_run_rejects_what_is_not_a_projection(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    SqliteEventStore(path).close()
    for target in ("nocolon", "tests.support.cli_projection:TABLE", "no_such_module:x"):
        result = runner.invoke(app, ["projections", "run", target, "--db", str(path)])
        assert result.exit_code == 1, target
        assert "error:" in result.stderr


def test_a_rebuild_refuses_while_the_application_runs_the_projection(tmp_path: Path) -> None:
    from eventfold.projections import ProjectionRunner  # noqa: PLC0415
    from tests.support.cli_projection import counts  # noqa: PLC0415

    path = tmp_path / "live.db"
    with SqliteEventStore(path) as store:
        for i in range(30):
            store.append(f"s-{i % 3}", [Deposited(amount=i)])
        live = ProjectionRunner(store, counts, owner="app-host:4242", lease_seconds=60)
        assert live.run_once() == 30  # the application's runner holds the lease
        target = ["projections", "run", "tests.support.cli_projection:counts", "--db", str(path)]
        refused = runner.invoke(app, [*target, "--rebuild"])
        assert refused.exit_code == 1
        assert "app-host:4242" in refused.stderr and "switch" in refused.stderr
        # The live read model is untouched, and its runner goes on.
        rows = store._db.connection().execute("SELECT sum(n) FROM cli_counts").fetchone()
        assert rows == (30,)
        store.append("s-0", [Deposited(amount=1)])
        assert live.run_once() == 1
        live.release()  # the application stopped: now the rebuild may run
        rebuilt = runner.invoke(app, [*target, "--rebuild"])
        assert rebuilt.exit_code == 0, rebuilt.output
        assert "cli-counts: 31 events handled" in rebuilt.stdout


def test_projections_run_takes_a_factory_of_the_store(tmp_path: Path) -> None:
    path = tmp_path / "pm.db"
    with SqliteEventStore(path) as store:
        store.append("s-1", [Deposited(amount=3), Deposited(amount=4)])
    ran = runner.invoke(
        app, ["projections", "run", "tests.support.cli_projection:mirror", "--db", str(path)]
    )
    assert ran.exit_code == 0, ran.output
    with SqliteEventStore(path) as store:
        assert [e.data.amount for e in store.read("mirror-s-1")] == [3, 4]


def test_projections_switch_points_an_alias_at_a_rebuilt_version(tmp_path: Path) -> None:
    from eventfold.projections import active_projection  # noqa: PLC0415

    path = tmp_path / "bg.db"
    with SqliteEventStore(path) as store:
        store.append("s-1", [Deposited(amount=1)])
    run = ["projections", "run", "tests.support.cli_projection:counts", "--db", str(path)]
    assert runner.invoke(app, run).exit_code == 0
    unknown = runner.invoke(app, ["projections", "switch", "counts", "nope", "--db", str(path)])
    assert unknown.exit_code == 1 and "nope" in unknown.stderr
    switched = runner.invoke(
        app, ["projections", "switch", "counts", "cli-counts", "--db", str(path)]
    )
    assert switched.exit_code == 0, switched.output
    assert "counts: (none) -> cli-counts" in switched.stdout
    with SqliteEventStore(path) as store:
        assert active_projection(store, "counts") == "cli-counts"
