"""PostgreSQL under load: writer processes, tailing readers, a SIGKILLed writer, a restart.

Bounded in counts so the module runs in well under a minute on two cores.
The restart test is opt-in (it restarts the shared server): set
``EVENTFOLD_TEST_PG_RESTART`` to the command that restarts it, e.g.
``pg_ctlcluster --skip-systemctl-redirect 15 main restart``.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import shlex
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from eventfold import ANY, NewEvent, RecordedEvent, StoreError
from eventfold.store.postgres import PostgresEventStore, migrate
from eventfold.testing import follow_log
from eventfold.testing._events import Deposited
from tests.support.pg import new_schema_name

pytestmark = pytest.mark.slow

CTX = multiprocessing.get_context("spawn")
WRITERS = 8
APPENDS = 150
HOT_EVERY = 15  # every 15th append of each writer goes to the one hot stream
KILL_BATCH = 50
RETRY_SECONDS = 60.0


def _append_retrying(
    store: PostgresEventStore, stream: str, batch: list[NewEvent[Any]]
) -> list[str]:
    """Append, retrying retryable errors with the same event ids; return the errors seen.

    Retries back off exponentially (as an application's retry policy would)
    for up to RETRY_SECONDS, long enough for a server restart.
    """
    errors: list[str] = []
    deadline = time.monotonic() + RETRY_SECONDS
    delay = 0.01
    while True:
        try:
            store.append(stream, batch, expected=ANY)
            return errors
        except StoreError as exc:
            # Same ids again: if the lost answer was a commit, the retry is a no-op.
            if not exc.retryable or time.monotonic() > deadline:
                raise
            errors.append(type(exc).__name__)
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _reporting(acks: Any, writer: int, body: Callable[[], None]) -> None:
    """Run a writer's body; always end with its marker, naming a failure if any."""
    try:
        body()
    except BaseException as exc:
        acks.put((writer, None, [f"writer {writer} died: {exc!r}"]))
        raise
    acks.put((writer, None, []))


def _writer(url: str, schema: str, writer: int, appends: int, acks: Any) -> None:
    def body() -> None:
        with PostgresEventStore(url, schema=schema, max_size=2) as store:
            for i in range(appends):
                stream = "hot" if i % HOT_EVERY == 0 else f"w{writer}-{i % 5}"
                batch = [NewEvent(data=Deposited(amount=i)) for _ in range(1 + i % 3)]
                errors = _append_retrying(store, stream, batch)
                acks.put((writer, [e.id.hex for e in batch], errors))

    _reporting(acks, writer, body)


def _tail(url: str, schema: str, writers_done: threading.Event, seen: list[RecordedEvent]) -> None:
    with PostgresEventStore(url, schema=schema, max_size=1, page_size=5) as store:
        seen.extend(
            follow_log(store, writers_done.is_set, limit=11, idle=lambda: writers_done.wait(0.005))
        )


def _collect_acks(acks: Any, writers: int) -> tuple[set[str], list[str]]:
    acked: set[str] = set()
    errors: list[str] = []
    running = writers
    while running:
        _, ids, seen_errors = acks.get(timeout=120)
        if ids is None:
            running -= 1
            assert not seen_errors, seen_errors  # a writer died: say why, do not hang
        else:
            acked.update(ids)
            errors += seen_errors
    return acked, errors


def test_writer_processes_and_tailing_readers_agree_on_every_event(pg_database: str) -> None:
    schema = new_schema_name()
    migrate(pg_database, schema=schema)
    acks = CTX.Queue()
    writers_done = threading.Event()
    seen: list[list[RecordedEvent]] = [[], []]
    failures: list[BaseException] = []

    def reader(n: int) -> None:
        try:
            _tail(pg_database, schema, writers_done, seen[n])
        except BaseException as exc:
            failures.append(exc)

    readers = [threading.Thread(target=reader, args=(n,)) for n in range(2)]
    procs = [
        CTX.Process(target=_writer, args=(pg_database, schema, w, APPENDS, acks))
        for w in range(WRITERS)
    ]
    for thread in readers:
        thread.start()
    for proc in procs:
        proc.start()
    try:
        acked, _ = _collect_acks(acks, WRITERS)
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
    finally:
        writers_done.set()
        for thread in readers:
            thread.join(60)
    assert failures == []
    expected_total = WRITERS * sum(1 + i % 3 for i in range(APPENDS))
    assert len(acked) == expected_total
    with PostgresEventStore(pg_database, schema=schema) as store:
        final = [(e.id, e.position) for e in store.read_all()]
        for sequence in seen:
            ids = [e.id.hex for e in sequence]
            assert len(ids) == len(set(ids)), "an event was delivered twice"
            assert set(ids) == acked, "a reader missed or invented events"
            positions = [e.position for e in sequence]
            assert all(a < b for a, b in itertools.pairwise(positions))
            assert [(e.id, e.position) for e in sequence] == final
        hot = [e.version for e in store.read("hot")]
        assert hot == list(range(1, WRITERS * len(range(0, APPENDS, HOT_EVERY)) + 1))
        for event in seen[0]:
            if event.stream != "hot":
                versions = [e.version for e in seen[0] if e.stream == event.stream]
                assert versions == list(range(1, len(versions) + 1)), event.stream


# -- a writer killed in the middle of big batches -------------------------------------------


def _batch_writer(url: str, schema: str, app: str, acks: Any) -> None:
    payload = "x" * 2000  # big rows: the insert of a batch takes a while
    url = psycopg.conninfo.make_conninfo(url, application_name=app)
    with PostgresEventStore(url, schema=schema, max_size=1) as store:
        n = 0
        while True:
            batch_id = f"b{n}"
            batch = [
                NewEvent(data=Deposited(amount=i), metadata={"batch": batch_id, "pad": payload})
                for i in range(KILL_BATCH)
            ]
            store.append(f"k-{n % 4}", batch)
            acks.put(batch_id)
            n += 1


def test_sigkilled_writer_leaves_only_whole_batches(pg_database: str) -> None:
    schema = new_schema_name()
    migrate(pg_database, schema=schema)
    acks = CTX.Queue()
    app = f"eventfold-kill-{schema}"  # names the writer's connection in pg_stat_activity
    proc = CTX.Process(target=_batch_writer, args=(pg_database, schema, app, acks))
    proc.start()
    acked = [acks.get(timeout=60) for _ in range(12)]  # well into its work
    with psycopg.connect(pg_database, autocommit=True) as monitor:
        # Wait until the writer's backend holds a transaction id, i.e. is inside
        # the insert of a batch (it does nothing else that writes), then kill it.
        in_batch = None
        for _ in range(10_000):
            in_batch = monitor.execute(
                "SELECT pid FROM pg_stat_activity "
                "WHERE application_name = %s AND backend_xid IS NOT NULL",
                [app],
            ).fetchone()
            if in_batch is not None:
                os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
                break
        assert in_batch is not None, "never caught the writer inside a batch"
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    with PostgresEventStore(pg_database, schema=schema) as store:
        events = list(store.read_all())
        batches = Counter(e.metadata["batch"] for e in events)
        assert set(acked) <= set(batches)
        assert set(batches.values()) == {KILL_BATCH}, "a partial batch was stored"
        for n in range(4):
            versions = [e.version for e in store.read(f"k-{n}")]
            assert len(versions) % KILL_BATCH == 0
            assert versions == list(range(1, len(versions) + 1))


# -- the server restarts while writers run (opt-in, last) -----------------------------------

RESTART = os.environ.get("EVENTFOLD_TEST_PG_RESTART")


def _restart_writer(url: str, schema: str, writer: int, appends: int, acks: Any) -> None:
    def body() -> None:
        with PostgresEventStore(url, schema=schema, max_size=2, connect_timeout=30) as store:
            for i in range(appends):
                batch = [NewEvent(data=Deposited(amount=i)) for _ in range(2)]
                errors = _append_retrying(store, f"r{writer}-{i % 3}", batch)
                acks.put((writer, [e.id.hex for e in batch], errors))

    _reporting(acks, writer, body)


@pytest.mark.skipif(not RESTART, reason="set EVENTFOLD_TEST_PG_RESTART to restart the server")
def test_server_restart_loses_no_acknowledged_event(pg_database: str) -> None:
    schema = new_schema_name()
    migrate(pg_database, schema=schema)
    writers, appends = 3, 400
    acks = CTX.Queue()
    procs = [
        CTX.Process(target=_restart_writer, args=(pg_database, schema, w, appends, acks))
        for w in range(writers)
    ]
    for proc in procs:
        proc.start()
    acked: set[str] = set()
    errors: list[str] = []
    first = [acks.get(timeout=60) for _ in range(writers * 10)]  # every writer is busy
    for _, ids, seen_errors in first:
        assert ids is not None, "a writer finished before the restart"
        acked.update(ids)
        errors += seen_errors
    assert RESTART is not None
    # Returns once the server accepts connections again.
    subprocess.run(shlex.split(RESTART), check=True, timeout=120)
    rest, rest_errors = _collect_acks(acks, writers)
    acked |= rest
    errors += rest_errors
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    # Pooled connections die with the server: their next use reports it.
    assert "StoreUnavailable" in errors, f"no writer noticed the restart: {errors}"
    with PostgresEventStore(pg_database, schema=schema) as store:
        stored = {e.id.hex for e in store.read_all()}
    assert len(acked) == writers * appends * 2
    assert acked <= stored
