"""Writers beside a long writer on one SQLite file: a projection catching up.

A SQL projection's batches hold SQLite's write lock one after the other;
writers with other connections (another store object, another process) must
get their appends in between, not wait for the whole catch-up. Waits here are
bounded joins and subprocess timeouts; nothing is timed.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from eventfold import SqliteEventStore, StoreClosed, StoreTimeout
from eventfold.testing._events import Deposited
from tests.support.sqlite_catch_up import append_until, record_appends

ROOT = Path(__file__).resolve().parent.parent
BOUND = 60.0  # seconds a step may take before the test calls it hung
BACKLOG = 3_000  # events the projection catches up (about 1 s of handling)
#: Distinct gaps between projection batches in which each writer must have
#: appended: each of ~20 transactions of the catch-up ends with a turn for them.
INTERLEAVED = 3


@pytest.mark.slow
def test_writers_get_appends_in_between_the_batches_of_a_catch_up(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with SqliteEventStore(path, durability="normal") as store:
        for first in range(0, BACKLOG, 100):
            store.append(f"acc-{first // 100 % 10}", [Deposited(amount=1)] * 100)
    # The writer in another process than the catch-up: this one. The catch-up's
    # process has a writer thread of its own, with another store object.
    writer = SqliteEventStore(path)
    record_appends(writer, "process")
    stop = threading.Event()
    outcome: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: outcome.update(append_until(writer, "process", stop)), daemon=True
    )
    thread.start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tests.support.sqlite_catch_up", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=BOUND,
            check=False,
        )
    finally:
        stop.set()
        thread.join(BOUND)
        writer.close()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    report["process"] = outcome

    with SqliteEventStore(path, read_only=True) as store:
        # Every acknowledged append is stored once, none timed out or failed.
        for name in ("process", "thread"):
            writer_outcome = report[name]
            assert writer_outcome["errors"] == []
            assert writer_outcome["timeouts"] == 0, f"{name}: {writer_outcome}"
            versions = [e.version for e in store.read(name)]
            assert versions == list(range(1, writer_outcome["appends"] + 1))
        # The projection handled every backlog event exactly once.
        assert report["handled"] == BACKLOG
    conn = sqlite3.connect(path)
    try:
        handled = [row[0] for row in conn.execute("SELECT position FROM caught_up ORDER BY 1")]
        appends = conn.execute("SELECT writer, position, checkpoint FROM writer_appends").fetchall()
        (final,) = conn.execute(
            "SELECT position FROM eventfold_checkpoints WHERE name = 'catch-up'"
        ).fetchone()
    finally:
        conn.close()
    assert handled == list(range(1, BACKLOG + 1))
    assert final >= BACKLOG
    for name in ("process", "thread"):
        mine = [(position, seen) for writer_name, position, seen in appends if writer_name == name]
        assert len(mine) == report[name]["appends"]  # each committed append recorded once
        # Appends that committed after some of the catch-up's batches and before
        # others: the checkpoint they saw had moved from 0, and moved on later.
        between = {seen for _, seen in mine if 0 < seen < BACKLOG}
        assert len(between) >= INTERLEAVED, (
            f"the {name} writer appended between {len(between)} pairs of the catch-up's "
            f"batches ({len(mine)} appends in all): it waited out the catch-up"
        )


def test_reads_after_a_write_wait_for_locks_as_long_as_busy_timeout(tmp_path: Path) -> None:
    # A write waits for other connections in eventfold's own loop, with SQLite's
    # handler off; reads (SQLITE_BUSY while another process recovers the file)
    # get SQLite's handler back, with busy_timeout.
    with SqliteEventStore(tmp_path / "events.db", busy_timeout=2.5) as store:
        store.append("s", [Deposited(amount=1)])
        with store._db.reading() as conn:
            assert conn.execute("PRAGMA busy_timeout").fetchone() == (2500,)
        store.append("s", [Deposited(amount=1)])
        assert store._db.connection().execute("PRAGMA busy_timeout").fetchone() == (2500,)
        assert [e.version for e in store.read("s")] == [1, 2]


def test_a_write_blocked_by_another_connection_times_out_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.db"
    with SqliteEventStore(path, busy_timeout=0.05) as store:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with (
                caplog.at_level(logging.WARNING, "eventfold.store.sqlite"),
                pytest.raises(StoreTimeout) as info,
            ):
                store.append("s", [Deposited(amount=1)])
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert info.value.retryable
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        assert "busy_timeout" in str(info.value)
        assert any("another connection" in r.getMessage() for r in caplog.records)
        assert store.get_stream("s") is None
        store.append("s", [Deposited(amount=1)])  # free again: the next write goes through
        assert [e.version for e in store.read("s")] == [1]


class _CloseOnSecondCheck(threading.Event):
    """A stop event that closes the store when the wait checks it the second time."""

    def __init__(self, store: SqliteEventStore) -> None:
        super().__init__()
        self.store = store
        self.checks = 0

    def is_set(self) -> bool:
        self.checks += 1
        if self.checks == 2:
            self.store.close()
        return super().is_set()


def test_a_projection_wait_on_a_store_closed_meanwhile_raises_store_closed(
    tmp_path: Path,
) -> None:
    store = SqliteEventStore(tmp_path / "events.db")
    store.append("s", [Deposited(amount=1)])
    backend = store.checkpoints()
    stop = _CloseOnSecondCheck(store)
    with pytest.raises(StoreClosed):
        backend.wait(store.last_position(), 5.0, stop)
    assert stop.checks >= 2  # it was waiting when the store closed
