"""Operating a SQLite store: backups read by the CLI, a foreign file, shutting down.

Each story uses real processes (the ``eventfold`` CLI as a subprocess, an
application process), real files and a real read-only bind mount.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from eventfold import ConfigurationError, SqliteEventStore
from eventfold.projections import Projection, ProjectionContext, ProjectionRunner
from eventfold.testing._events import Deposited
from tests.support.mounts import read_only_view

BOUND = 60.0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventfold.cli", *args],
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def count_handled(ctx: ProjectionContext, event: object) -> None:
    ctx.execute("UPDATE handled SET n = n + 1")


def make_handled(ctx: ProjectionContext) -> None:
    ctx.execute("CREATE TABLE IF NOT EXISTS handled (n INTEGER)")
    ctx.execute("INSERT INTO handled SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM handled)")


def test_the_cli_reads_a_read_only_backup_while_the_application_writes(tmp_path: Path) -> None:
    live_dir, backup_dir = tmp_path / "live", tmp_path / "backups"
    live_dir.mkdir()
    backup_dir.mkdir()
    live = SqliteEventStore(live_dir / "bank.db")
    for i in range(30):
        live.append(f"account-{i % 3}", [Deposited(amount=i)])
    ProjectionRunner(live, Projection("handled", count_handled, setup=make_handled)).run_once()

    # The application keeps writing while the backup is taken and read.
    stop, appended = threading.Event(), []

    def application() -> None:
        n = 0
        while not stop.is_set() and n < 5000:
            appended.append(live.append(f"account-{n % 3}", [Deposited(amount=n)]))
            n += 1

    writer = threading.Thread(target=application)
    writer.start()
    try:
        with (
            sqlite3.connect(live_dir / "bank.db") as source,
            sqlite3.connect(backup_dir / "bank.db") as target,
        ):
            source.backup(target)  # SQLite's online backup: a consistent copy
        source.close()
        target.close()
        with read_only_view(backup_dir, tmp_path / "mnt") as mounted:
            backup = mounted / "bank.db"
            before = digest(backup)
            with SqliteEventStore(backup, read_only=True) as copy:
                in_backup = list(copy.read_all())

            streams = cli("streams", "--db", str(backup))
            assert streams.returncode == 0, streams.stderr
            assert f"3 streams, {len(in_backup)} events" in streams.stdout
            show = cli("show", "account-1", "--db", str(backup))
            assert show.returncode == 0, show.stderr
            assert "history of account-1" in show.stdout
            status = cli("projections", "status", "--db", str(backup))
            assert status.returncode == 0, status.stderr
            assert "handled" in status.stdout

            # A command that writes says what is wrong and what to do.
            prune = cli("snapshots", "prune", "--db", str(backup))
            assert prune.returncode == 1
            assert "read-only file system" in prune.stderr
            assert "read_only=True" in prune.stderr
            assert "Traceback" not in prune.stderr
            assert digest(backup) == before

        # The live file, read by the CLI while the application writes it.
        on_live = cli("streams", "--db", str(live_dir / "bank.db"))
        assert on_live.returncode == 0, on_live.stderr
        assert "3 streams" in on_live.stdout
    finally:
        stop.set()
        writer.join(BOUND)
    total = sum(1 for _ in live.read_all())
    assert total == 30 + len(appended) >= len(in_backup)
    live.close()


def test_a_foreign_application_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    app = sqlite3.connect(path, isolation_level=None)
    app.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    app.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total INTEGER)")
    app.execute("INSERT INTO customers (name) VALUES ('ann'), ('bo')")
    app.close()
    before = digest(path)

    try:
        SqliteEventStore(path)
    except ConfigurationError as exc:
        message = str(exc)
    else:
        raise AssertionError("eventfold opened another application's database")
    assert "is not an eventfold database" in message
    assert "customers, invoices" in message

    for args in (["streams"], ["show", "x"], ["snapshots", "prune"]):
        done = cli(*args, "--db", str(path))
        assert done.returncode == 1, done.stdout
        assert "is not an eventfold database" in done.stderr
        assert "Traceback" not in done.stderr
    assert digest(path) == before
    with sqlite3.connect(path) as app:
        names = [r[0] for r in app.execute("SELECT name FROM customers ORDER BY id")]
        tables = [r[0] for r in app.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    app.close()
    assert names == ["ann", "bo"]
    assert sorted(tables) == ["customers", "invoices"]


SHUTDOWN = """
import json, sys, threading
from eventfold import SqliteEventStore, StoreClosed
from eventfold.projections import Projection, ProjectionRunner
from eventfold.testing._events import Deposited

store = SqliteEventStore(sys.argv[1], durability="normal", page_size=25)
for i in range(100):
    store.append(f"s-{i % 4}", [Deposited(amount=i)])
busy = threading.Barrier(5)
acknowledged, outcomes, lock = [], {}, threading.Lock()


def record(name, fn):
    def run():
        try:
            fn()
            outcome = "returned"
        except StoreClosed:
            outcome = "StoreClosed"
        except BaseException as exc:
            outcome = repr(exc)
        with lock:
            outcomes[name] = outcome
    return threading.Thread(target=run, name=name)


def reader():
    first = True
    while True:
        for _ in store.read_all():
            if first:
                first = False
                busy.wait()


def writer():
    n = 0
    while True:
        result = store.append(f"w-{n % 3}", [Deposited(amount=n)])
        with lock:
            acknowledged.append([result.stream, result.to_version])
        if n == 0:
            busy.wait()
        n += 1


def handle(ctx, event):
    ctx.execute("INSERT INTO seen (position) VALUES (?)", (event.position,))


def setup(ctx):
    ctx.execute("CREATE TABLE IF NOT EXISTS seen (position INTEGER PRIMARY KEY)")


runner = ProjectionRunner(store, Projection("seen", handle, setup=setup, batch_size=10),
                          poll_interval=0.05)
runner.run_once()
stop = threading.Event()


def project():
    busy.wait()
    runner.run(stop)


threads = [record("reader-1", reader), record("reader-2", reader), record("writer", writer),
           record("runner", project)]
for thread in threads:
    thread.start()
busy.wait()
store.close()
for thread in threads:
    thread.join(30)
print(json.dumps({"outcomes": outcomes, "acknowledged": acknowledged,
                  "alive": [t.name for t in threads if t.is_alive()]}))
"""


def test_closing_the_store_while_threads_read_write_and_project(tmp_path: Path) -> None:
    for attempt in range(5):  # several shutdowns, each at another moment
        path = tmp_path / f"app-{attempt}.db"
        done = subprocess.run(
            [sys.executable, "-c", SHUTDOWN, str(path)],
            capture_output=True,
            text=True,
            timeout=BOUND,
            check=False,
        )
        assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
        report = json.loads(done.stdout)
        assert report["alive"] == []
        assert report["outcomes"] == {
            "reader-1": "StoreClosed",
            "reader-2": "StoreClosed",
            "writer": "StoreClosed",
            "runner": "StoreClosed",
        }
        with SqliteEventStore(path) as store:
            # Every acknowledged append is in the file, and nothing else was written.
            for stream, version in report["acknowledged"]:
                info = store.get_stream(stream)
                assert info is not None and info.version >= version
            written = sum(1 for e in store.read_all() if e.stream.startswith("w-"))
            assert written == len(report["acknowledged"])
            seen = store._db.connection().execute("SELECT count(*) FROM seen").fetchone()[0]
            assert seen <= store.last_position()
