"""The PostgreSQL store when connections stall, break or lose a reply.

Most tests run the real server behind a TCP proxy on 127.0.0.1
(tests/proxy.py) that can freeze, cut every connection, or drop the reply to
one request. A frozen proxy is not a network partition in one respect: the
proxy's kernel still acknowledges every byte the store sends, so TCP
keepalives and ``tcp_user_timeout`` (which notice a peer that acknowledges
nothing) cannot fire; what bounds a call there is the store's
``stall_timeout``. A real partition needs a network namespace of its own
(tests/partition.py): that test runs where ``unshare -n`` works (as root).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql

from eventfold import (
    NO_STREAM,
    ConfigurationError,
    NewEvent,
    RecordedEvent,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)
from eventfold.projections import Projection, ProjectionContext, ProjectionRunner
from eventfold.store.postgres import AsyncPostgresEventStore, PostgresEventStore, migrate
from eventfold.testing._events import Deposited, Opened
from tests.support.partition import bridge
from tests.support.pg import free_loopback_port, new_schema_name
from tests.support.proxy import TcpProxy

T = TypeVar("T")
GUARD = 30.0  # no call in this module may block longer than this


@pytest.fixture
def schema(pg_database: str) -> str:
    name = new_schema_name()
    migrate(pg_database, schema=name)
    return name


@pytest.fixture
def proxy(pg_database: str) -> Iterator[TcpProxy]:
    with TcpProxy.to(pg_database) as running:
        yield running


def _timed(call: Callable[[], object]) -> tuple[BaseException | None, float]:
    """Run ``call`` in a thread; its error (None if it returned) and how long it took."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(GUARD)
    assert not thread.is_alive(), f"still blocked after {GUARD:g} s"
    return outcome[0], time.monotonic() - started


def _until_it_works(call: Callable[[], T]) -> tuple[T, float, list[str]]:
    """Retry ``call`` on retryable errors, as an application would; result, seconds, errors."""
    started = time.monotonic()
    errors: list[str] = []
    while True:
        try:
            return call(), time.monotonic() - started, errors
        except StoreError as exc:
            assert exc.retryable, exc
            assert time.monotonic() - started < GUARD, f"not working after {GUARD:g} s: {exc}"
            errors.append(type(exc).__name__)


# -- A: stalled connections ----------------------------------------------------------------


def _socket_options(conn: psycopg.Connection[Any]) -> dict[str, int]:
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        return {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }
    finally:
        sock.close()


def test_tcp_keepalive_defaults_reach_the_sockets(pg_database: str, schema: str) -> None:
    with PostgresEventStore(pg_database, schema=schema) as store:
        store.last_position()
        with store.pool.connection() as conn:
            pooled = _socket_options(conn)
        # What the first schema check and a subscription's LISTEN connect with.
        with store._connect() as dedicated:
            own = _socket_options(dedicated)
    expected = {"keepalive": 1, "idle": 15, "interval": 5, "count": 3, "user_timeout": 30000}
    assert pooled == own == expected


def test_the_conninfo_wins_over_the_tcp_defaults(pg_database: str, schema: str) -> None:
    url = psycopg.conninfo.make_conninfo(
        pg_database, keepalives_idle=7, keepalives_count=9, tcp_user_timeout=1234
    )
    with PostgresEventStore(url, schema=schema) as store:
        store.last_position()
        with store.pool.connection() as conn:
            options = _socket_options(conn)
    expected = {"keepalive": 1, "idle": 7, "interval": 5, "count": 9, "user_timeout": 1234}
    assert options == expected


def test_statement_timeout_option_cancels_on_the_server(pg_database: str, schema: str) -> None:
    with PostgresEventStore(pg_database, schema=schema, statement_timeout=0.3) as store:
        store.append("s", [Deposited(amount=1)])
        with store.pool.connection() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() == ("300ms",)
        with psycopg.connect(pg_database) as blocker:
            query = sql.SQL("LOCK TABLE {}.events IN ACCESS EXCLUSIVE MODE")
            blocker.execute(query.format(sql.Identifier(schema)))
            with pytest.raises(StoreTimeout) as info:
                store.append("s", [Deposited(amount=2)])
        assert info.value.retryable and not info.value.outcome_unknown
        assert isinstance(info.value.__cause__, psycopg.errors.QueryCanceled)
        assert [e.version for e in store.read("s")] == [1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"statement_timeout": 0}, "statement_timeout must be finite seconds"),
        ({"stall_timeout": -1}, "stall_timeout must be finite seconds"),
        ({"statement_timeout": 5, "stall_timeout": 5}, "must exceed statement_timeout"),
    ],
)
def test_timeouts_must_make_sense(options: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PostgresEventStore("postgresql://unused", **options)


def test_a_statement_timeout_in_both_places_is_refused(pg_database: str) -> None:
    url = psycopg.conninfo.make_conninfo(pg_database, options="-c statement_timeout=100")
    with pytest.raises(ConfigurationError, match="keep one"):
        PostgresEventStore(url, statement_timeout=1)


def test_a_frozen_connection_fails_in_bounded_time_then_the_pool_recovers(
    pg_database: str, schema: str, proxy: TcpProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    url = proxy.conninfo(pg_database)
    with PostgresEventStore(
        url, schema=schema, min_size=1, max_size=1, connect_timeout=2, stall_timeout=2
    ) as store:
        store.append("s", [Deposited(amount=1)])
        proxy.freeze()
        # The append's statement is sent into the freeze; its answer never comes.
        late = NewEvent(data=Deposited(amount=2))
        append_error, append_seconds = _timed(lambda: store.append("s", [late]))
        assert isinstance(append_error, StoreUnavailable), append_error
        assert append_error.outcome_unknown and "stalled" in str(append_error)
        # The pool's only connection died; its replacement cannot get through the freeze.
        read_error, read_seconds = _timed(lambda: list(store.read_all()))
        assert isinstance(read_error, StoreUnavailable), read_error
        assert "could be opened" in str(read_error) and not read_error.outcome_unknown
        proxy.thaw()
        # Same ids again: exactly once, whether the frozen statement arrived late or not.
        result, recovery, errors = _until_it_works(lambda: store.append("s", [late]))
        assert [e.data for e in store.read("s")] == [Deposited(amount=1), Deposited(amount=2)]
        assert result.to_version == 2
    with capsys.disabled():
        print(
            f"\n[frozen connection] append failed after {append_seconds:.2f} s, read_all "
            f"after {read_seconds:.2f} s (stall_timeout=2, connect_timeout=2); working "
            f"again {recovery:.2f} s after the thaw ({errors or 'no error'})"
        )


@pytest.mark.asyncio
async def test_an_async_frozen_read_fails_in_bounded_time(
    pg_database: str, schema: str, proxy: TcpProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    url = proxy.conninfo(pg_database)
    async with AsyncPostgresEventStore(
        url, schema=schema, min_size=2, max_size=2, connect_timeout=2, stall_timeout=2
    ) as store:
        await store.append("s", [Deposited(amount=1)])
        proxy.freeze()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            await asyncio.wait_for(store.last_position(), GUARD)
        seconds = time.monotonic() - started
        assert "stalled" in str(info.value)
        proxy.thaw()
        deadline = time.monotonic() + GUARD
        while True:
            try:
                assert [e.version async for e in store.read("s")] == [1]
                break
            except StoreError as exc:
                assert exc.retryable and time.monotonic() < deadline
    with capsys.disabled():
        print(f"\n[frozen connection, async] failed after {seconds:.2f} s (stall_timeout=2)")


def _partition_unavailable() -> str | None:
    """Why a network namespace cannot be made here (None: it can)."""
    if sys.platform != "linux" or not (shutil.which("unshare") and shutil.which("ip")):
        return "a network partition needs Linux with unshare and ip"
    probe = subprocess.run(
        ["unshare", "-n", "ip", "link", "set", "lo", "up"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if probe.returncode:
        return f"cannot create a network namespace here: {probe.stderr.strip()}"
    return None


def test_a_real_partition_is_noticed_by_tcp_user_timeout(
    pg_database: str, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = _partition_unavailable()
    if reason is not None:
        pytest.skip(reason)
    params = psycopg.conninfo.conninfo_to_dict(pg_database)
    target = (str(params.pop("host", "127.0.0.1")), int(params.pop("port", 5432)))
    # The store's conninfo: the server's database and user, a short tcp_user_timeout.
    conninfo = psycopg.conninfo.make_conninfo("", **params, tcp_user_timeout=2000)
    with tempfile.TemporaryDirectory(prefix="ef-") as folder:
        path = os.path.join(folder, "pg.sock")  # short: Unix socket paths are limited
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(path)
            listener.listen()
            threading.Thread(
                target=bridge,
                args=(listener, lambda: socket.create_connection(target)),
                daemon=True,
            ).start()
            proc = subprocess.run(
                [
                    "unshare",
                    "-n",
                    sys.executable,
                    "-m",
                    "tests.support.partition",
                    path,
                    conninfo,
                    schema,
                ],
                capture_output=True,
                text=True,
                timeout=2 * GUARD,
                cwd=Path(__file__).resolve().parent.parent,
                check=False,
            )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    append = report["append"]
    assert append["error"] == "StoreUnavailable", append
    assert append["outcome_unknown"], append
    assert report["versions"] == [1, 2]  # the resent append is stored once
    with capsys.disabled():
        print(
            f"\n[partition] append failed after {append['seconds']:.2f} s "
            f"(tcp_user_timeout=2000, no stall_timeout); working again "
            f"{report['recovered_seconds']:.2f} s after the partition ended"
        )


# -- B: subscriptions resume ---------------------------------------------------------------


class _Outages(logging.Handler):
    """Counts the store's warnings that a subscription failed and that it resumed."""

    def __init__(self, changed: threading.Condition) -> None:
        super().__init__(logging.WARNING)
        self.changed = changed
        self.failed = 0
        self.resumed = 0
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        with self.changed:
            self.messages.append(message)
            if "resuming in" in message:
                self.failed += 1
            if "subscription resumed after position" in message:
                self.resumed += 1
            self.changed.notify_all()


def _cut_while_subscribed(
    pg_database: str, schema: str, proxy: TcpProxy, total: int, cut_at: list[int]
) -> tuple[list[RecordedEvent], list[RecordedEvent], _Outages]:
    """A subscriber behind the proxy, a writer beside it, a cut at each count in ``cut_at``.

    Each cut waits until the subscriber has noticed the one before and resumed
    (its warnings say so), so every cut lands on a live subscription.
    """
    received: list[RecordedEvent] = []
    progress = threading.Condition()
    failures: list[BaseException] = []
    outages = _Outages(progress)
    store_logger = logging.getLogger("eventfold.store")
    store_logger.addHandler(outages)
    try:
        with (
            PostgresEventStore(
                proxy.conninfo(pg_database), schema=schema, connect_timeout=2
            ) as store,
            PostgresEventStore(pg_database, schema=schema) as writer,
        ):
            # The subscriber follows until told to stop, so it is alive (connected, or
            # reconnecting) at every cut, however far ahead of it the writer runs.
            stop = threading.Event()
            subscription = store.subscribe(poll_interval=0.5, stop=stop)

            def follow() -> None:
                try:
                    for event in subscription:
                        with progress:
                            received.append(event)
                            progress.notify_all()
                except BaseException as exc:
                    failures.append(exc)
                    with progress:
                        progress.notify_all()

            def write() -> None:
                for n in range(total):
                    writer.append(f"w-{n % 4}", [Deposited(amount=n)])

            follower = threading.Thread(target=follow, daemon=True)
            follower.start()
            appender = threading.Thread(target=write, daemon=True)
            appender.start()
            for n, count in enumerate(cut_at):
                with progress:
                    assert progress.wait_for(
                        lambda c=count: len(received) >= c or bool(failures), GUARD
                    )
                    assert not failures, failures
                    before = outages.resumed
                assert proxy.cut() >= 1
                with progress:
                    # Resumed (so LISTENing on a live connection again) before the next cut.
                    assert progress.wait_for(
                        lambda b=before: outages.resumed > b or bool(failures), GUARD
                    ), f"cut {n + 1}: the subscriber never resumed: {outages.messages}"
            appender.join(GUARD)
            with progress:
                assert progress.wait_for(lambda: len(received) >= total or bool(failures), GUARD)
            stop.set()
            follower.join(GUARD)
            assert not failures, failures
            assert not follower.is_alive(), f"the subscriber stopped at {len(received)} events"
            log = list(writer.read_all())
    finally:
        store_logger.removeHandler(outages)
    return received, log, outages


def test_a_subscription_resumes_after_every_cut_and_delivers_each_event_once(
    pg_database: str, schema: str, proxy: TcpProxy
) -> None:
    received, log, outages = _cut_while_subscribed(
        pg_database, schema, proxy, total=90, cut_at=[10, 40, 70]
    )
    assert [e.id for e in received] == [e.id for e in log]  # every event, once, in order
    assert outages.resumed >= 3, outages.messages  # at least one resume per cut
    assert outages.failed >= 3, outages.messages  # each cut was noticed and said
    assert all("StoreUnavailable" in m for m in outages.messages if "resuming in" in m), (
        outages.messages
    )


@pytest.mark.asyncio
async def test_an_async_subscription_resumes_after_a_cut(
    pg_database: str, schema: str, proxy: TcpProxy
) -> None:
    url = proxy.conninfo(pg_database)
    async with AsyncPostgresEventStore(url, schema=schema, connect_timeout=2) as store:
        first = await store.append("s", [Deposited(amount=1)])
        subscription = store.subscribe(poll_interval=0.5)
        assert (await asyncio.wait_for(anext(subscription), GUARD)).position == first.position
        pending = asyncio.ensure_future(anext(subscription))
        # Wait until the subscriber's LISTEN and pooled connections are open, then cut.
        deadline = time.monotonic() + GUARD
        while proxy.connections < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert proxy.cut() >= 2
        with PostgresEventStore(pg_database, schema=schema) as writer:
            second = await asyncio.to_thread(writer.append, "s", [Deposited(amount=2)])
        assert (await asyncio.wait_for(pending, GUARD)).position == second.position
        await subscription.aclose()


def test_a_non_retryable_error_still_ends_a_subscription(pg_database: str, schema: str) -> None:
    with PostgresEventStore(pg_database, schema=schema) as store:
        store.append("s", [Deposited(amount=1)])
        subscription = store.subscribe(poll_interval=0.05)
        next(subscription)
        with psycopg.connect(pg_database, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        with pytest.raises(ConfigurationError, match="migrate"):
            next(subscription)


# -- D: a reply lost after the commit --------------------------------------------------------


def test_a_lost_reply_is_outcome_unknown_and_resending_the_same_events_is_exactly_once(
    pg_database: str, schema: str, proxy: TcpProxy
) -> None:
    url = proxy.conninfo(pg_database)
    attempts = 20
    with PostgresEventStore(url, schema=schema, max_size=1, connect_timeout=5) as store:
        store.last_position()
        for attempt in range(attempts):
            marker = f"lost-reply-{attempt}-{uuid.uuid4().hex}"
            event = NewEvent(data=Opened(owner=marker))
            # Alternately: a shared stream with expected=ANY (the resend hits the stored
            # id), a new stream with NO_STREAM (the resend finds the stream exists).
            stream, expected = ("shared", None) if attempt % 2 else (f"new-{attempt}", NO_STREAM)
            options: dict[str, Any] = {} if expected is None else {"expected": expected}
            proxy.lose_reply(marker.encode())
            with pytest.raises(StoreUnavailable) as info:
                store.append(stream, [event], **options)
            assert proxy.reply_lost.is_set(), "the proxy did not see the append"
            assert info.value.retryable and info.value.outcome_unknown
            message = str(info.value)
            assert "may or may not have been committed" in message and "NewEvent" in message
            stored, _, _ = _until_it_works(lambda e=event: store.find_event(e.id))
            assert stored is not None and stored.data == Opened(owner=marker)
            result = store.append(stream, [event], **options)
            assert (result.stream, result.to_version, result.position) == (
                stream,
                stored.version,
                stored.position,
            )
        ids = [e.id for e in store.read_all()]
    assert len(ids) == len(set(ids)) == attempts


@pytest.mark.asyncio
async def test_an_async_lost_reply_is_outcome_unknown(
    pg_database: str, schema: str, proxy: TcpProxy
) -> None:
    url = proxy.conninfo(pg_database)
    async with AsyncPostgresEventStore(url, schema=schema, max_size=1) as store:
        await store.last_position()
        batch = [
            NewEvent(data=Opened(owner="async-lost-reply")),
            NewEvent(data=Deposited(amount=1)),
        ]
        proxy.lose_reply(b"async-lost-reply")
        with pytest.raises(StoreUnavailable) as info:
            await asyncio.wait_for(store.append("s", batch), GUARD)
        assert info.value.outcome_unknown
        assert proxy.reply_lost.is_set()
        deadline = time.monotonic() + GUARD
        while True:
            try:
                result = await store.append("s", batch)
                break
            except StoreError as exc:
                assert exc.retryable and time.monotonic() < deadline
        assert (result.from_version, result.to_version) == (1, 2)
        assert [e.id async for e in store.read("s")] == [e.id for e in batch]


def test_no_connection_at_all_is_not_outcome_unknown() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_loopback_port()}/test"
    with (
        PostgresEventStore(url, connect_timeout=2) as store,
        pytest.raises(StoreUnavailable) as info,
    ):
        store.append("s", [NewEvent(data=Deposited(amount=1))])
    assert info.value.retryable and not info.value.outcome_unknown
    assert "may or may not" not in str(info.value)


# -- a projection's lost COMMIT answer ---------------------------------------------------


def test_a_projection_batch_whose_commit_answer_is_lost_is_not_applied_twice(
    pg_database: str, schema: str, proxy: TcpProxy
) -> None:
    table = sql.Identifier(schema, "seen")

    def setup(ctx: ProjectionContext) -> None:
        ctx.connection.execute(sql.SQL("CREATE TABLE {} (id uuid)").format(table))

    def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
        ctx.connection.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(table), (event.id,))

    with PostgresEventStore(proxy.conninfo(pg_database), schema=schema) as store:
        runner = ProjectionRunner(store, Projection("seen", handle, setup=setup))
        first = store.append("s", [Deposited(amount=1)])
        _visible(store, first.position)
        assert runner.run_once() == 1
        second = store.append("s", [Deposited(amount=2), Deposited(amount=3)])
        _visible(store, second.position)
        proxy.lose_reply(b"COMMIT")  # the batch transaction's COMMIT: its answer is lost
        _until_it_works(runner.run_once)
        assert proxy.reply_lost.is_set()
        _until_it_works(runner.run_once)
        stored = sorted(e.id for e in store.read("s"))
        with psycopg.connect(pg_database) as conn:
            rows = conn.execute(sql.SQL("SELECT id FROM {}").format(table)).fetchall()
    assert sorted(row[0] for row in rows) == stored


def _visible(store: PostgresEventStore, position: int) -> None:
    """Wait until read_all shows ``position`` (a transaction elsewhere may hold it back)."""
    deadline = time.monotonic() + GUARD
    while store.last_position() < position:
        assert time.monotonic() < deadline, "the append never became visible"
        time.sleep(0.005)
