"""The PostgreSQL store: conformance suites, migration, error translation, ordering, LISTEN."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg_pool
import pytest
import pytest_asyncio
from psycopg import sql
from psycopg_pool import ConnectionPool

from eventfold import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    ConfigurationError,
    EventfoldError,
    InvalidRequest,
    NewEvent,
    RecordedEvent,
    StoreClosed,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    StreamAppend,
    WrongExpectedVersion,
    uuid7,
)
from eventfold.projections import Projection, ProjectionRunner, ProjectionStopped
from eventfold.serialization import Serializer
from eventfold.store._rows import encode_batch
from eventfold.store._rules import expectation_met
from eventfold.store._types import AppendResult, Expected
from eventfold.store.postgres import (
    LATEST_SCHEMA_VERSION,
    AsyncPostgresEventStore,
    PostgresEventStore,
    async_migrate,
    migrate,
)
from eventfold.store.postgres import _store as sync_postgres
from eventfold.store.postgres._connections import ConnectionStalled, PoolUnreachable
from eventfold.store.postgres._errors import translate_errors
from eventfold.store.postgres._statements import PostgresStatements, append_params
from eventfold.testing import (
    AsyncEventStoreLifecycleSuite,
    AsyncEventStoreSuite,
    EventStoreConcurrencySuite,
    EventStoreLifecycleSuite,
    EventStoreSuite,
)
from eventfold.testing._events import Deposited, Opened
from tests.support.calls import count_calls
from tests.support.pg import free_loopback_port, new_schema_name


def append_sql(statements: PostgresStatements, *args: Any) -> tuple[bytes, dict[str, Any]]:
    """The append statement and parameters the store would send."""
    name, params = append_params(*args)
    return statements[name], params


@pytest.fixture
def schema(pg_database: str) -> str:
    """A freshly migrated, empty schema."""
    name = new_schema_name()
    assert migrate(pg_database, schema=name) == LATEST_SCHEMA_VERSION
    return name


@pytest.fixture
def pg_store(pg_database: str, schema: str) -> Iterator[PostgresEventStore]:
    with PostgresEventStore(pg_database, schema=schema) as store:
        yield store


class TestPostgresEventStore(EventStoreSuite, EventStoreLifecycleSuite, EventStoreConcurrencySuite):
    @pytest.fixture
    def store(self, pg_store: PostgresEventStore) -> PostgresEventStore:
        return pg_store


class TestAsyncPostgresEventStore(AsyncEventStoreSuite, AsyncEventStoreLifecycleSuite):
    @pytest_asyncio.fixture
    async def store(self, pg_database: str) -> AsyncIterator[AsyncPostgresEventStore]:
        name = new_schema_name()
        assert await async_migrate(pg_database, schema=name) == LATEST_SCHEMA_VERSION
        async with AsyncPostgresEventStore(pg_database, schema=name) as store:
            yield store


# -- migration --------------------------------------------------------------------------


def _versions_recorded(url: str, schema: str) -> list[int]:
    with psycopg.connect(url) as conn:
        query = sql.SQL("SELECT version FROM {}.schema_version ORDER BY version")
        return [r[0] for r in conn.execute(query.format(sql.Identifier(schema)))]


def test_migration_is_idempotent_and_keeps_data(pg_database: str) -> None:
    name = new_schema_name()
    assert migrate(pg_database, schema=name) == LATEST_SCHEMA_VERSION
    with PostgresEventStore(pg_database, schema=name) as store:
        store.append("s", [Deposited(amount=1)])
        assert store.migrate() == LATEST_SCHEMA_VERSION
        assert migrate(pg_database, schema=name) == LATEST_SCHEMA_VERSION
        assert [e.data for e in store.read("s")] == [Deposited(amount=1)]
    assert _versions_recorded(pg_database, name) == list(range(1, LATEST_SCHEMA_VERSION + 1))


def test_concurrent_migrations_take_turns(pg_database: str) -> None:
    name = new_schema_name()
    results: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        try:
            results.append(migrate(pg_database, schema=name))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [LATEST_SCHEMA_VERSION] * 4
    assert _versions_recorded(pg_database, name) == list(range(1, LATEST_SCHEMA_VERSION + 1))


def test_missing_schema_says_to_migrate(pg_database: str) -> None:
    with PostgresEventStore(pg_database, schema=new_schema_name()) as store:
        with pytest.raises(ConfigurationError, match=r"migrate\("):
            store.append("s", [Deposited(amount=1)])
        assert store.migrate() == LATEST_SCHEMA_VERSION
        assert store.append("s", [Deposited(amount=1)]).to_version == 1


def test_schema_dropped_while_in_use_says_to_migrate(pg_database: str, schema: str) -> None:
    with PostgresEventStore(pg_database, schema=schema) as store:
        store.append("s", [Deposited(amount=1)])
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        with pytest.raises(ConfigurationError, match="migrate") as info:
            list(store.read("s"))
        assert isinstance(info.value.__cause__, psycopg.errors.UndefinedTable)


def test_newer_schema_is_refused(pg_database: str, schema: str) -> None:
    with psycopg.connect(pg_database) as conn:
        query = sql.SQL("INSERT INTO {}.schema_version (version) VALUES (99)")
        conn.execute(query.format(sql.Identifier(schema)))
    with (
        PostgresEventStore(pg_database, schema=schema) as store,
        pytest.raises(ConfigurationError, match="upgrade eventfold"),
    ):
        store.last_position()
    with pytest.raises(ConfigurationError, match="version 99"):
        migrate(pg_database, schema=schema)


@pytest.mark.parametrize("name", ["", "Upper", "1abc", "a-b", 'x"; DROP TABLE y; --', "a" * 49, 7])
def test_schema_name_must_be_a_plain_identifier(name: object) -> None:
    with pytest.raises(ConfigurationError, match="schema"):
        PostgresEventStore("postgresql://unused", schema=name)  # type: ignore[arg-type]


def test_conninfo_or_pool_not_both(pg_database: str) -> None:
    with pytest.raises(ConfigurationError, match="conninfo"):
        PostgresEventStore()
    with pytest.raises(ConfigurationError, match="max_size"):
        PostgresEventStore(pg_database, min_size=3, max_size=2)


def test_store_on_a_pool_it_does_not_own(pg_database: str, schema: str) -> None:
    with ConnectionPool(pg_database, min_size=1, max_size=2, open=True) as pool:
        with PostgresEventStore(pool=pool, schema=schema) as store:
            assert store.pool is pool
            store.append("s", [Deposited(amount=1), Deposited(amount=2)], expected=NO_STREAM)
            assert [e.version for e in store.read("s")] == [1, 2]
        assert not pool.closed  # the caller owns and closes it
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


# -- error translation ----------------------------------------------------------------------


def test_connection_refused_is_store_unavailable() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_loopback_port()}/test"
    with (
        PostgresEventStore(url, schema="eventfold", connect_timeout=2) as store,
        pytest.raises(StoreUnavailable) as info,
    ):
        store.last_position()
    assert info.value.retryable
    assert isinstance(info.value.__cause__, psycopg.OperationalError)


def test_terminated_connection_is_store_unavailable_then_replaced(
    pg_database: str, schema: str
) -> None:
    with PostgresEventStore(pg_database, schema=schema, max_size=1) as store:
        store.append("s", [Deposited(amount=1)])
        with store.pool.connection() as conn:
            pid = conn.info.backend_pid
        with psycopg.connect(pg_database, autocommit=True) as admin:
            # What a server shutdown or restart does to every session (57P01).
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(StoreUnavailable) as info:
            store.append("s", [Deposited(amount=2)], expected=1)
        assert info.value.retryable
        # The pool dropped the dead connection: the retry succeeds on a new one.
        assert store.append("s", [Deposited(amount=2)], expected=1).to_version == 2


def test_unknown_database_is_a_configuration_error(pg_database: str) -> None:
    url = psycopg.conninfo.make_conninfo(pg_database, dbname="eventfold_no_such_db")
    with (
        PostgresEventStore(url) as store,
        pytest.raises(ConfigurationError, match="create the database"),
    ):
        store.append("s", [Deposited(amount=1)])
    with pytest.raises(ConfigurationError, match="does not exist"):
        migrate(url)


def test_unknown_role_is_a_configuration_error(pg_database: str) -> None:
    url = psycopg.conninfo.make_conninfo(pg_database, user="eventfold_no_such_role")
    with PostgresEventStore(url) as store, pytest.raises(ConfigurationError, match="role"):
        store.last_position()


def test_statement_timeout_is_store_timeout(pg_database: str, schema: str) -> None:
    url = psycopg.conninfo.make_conninfo(pg_database, options="-c statement_timeout=200")
    with PostgresEventStore(url, schema=schema) as store:
        store.append("s", [Deposited(amount=1)])
        with psycopg.connect(pg_database) as blocker:
            # Holding an exclusive lock makes the store's next statement wait
            # until statement_timeout cancels it: no timing guesswork.
            query = sql.SQL("LOCK TABLE {}.events IN ACCESS EXCLUSIVE MODE")
            blocker.execute(query.format(sql.Identifier(schema)))
            with pytest.raises(StoreTimeout) as info:
                store.append("s", [Deposited(amount=2)])
            assert info.value.retryable
            assert isinstance(info.value.__cause__, psycopg.errors.QueryCanceled)
        assert [e.version for e in store.read("s")] == [1]
        store.append("s", [Deposited(amount=2)], expected=1)
        assert [e.version for e in store.read("s")] == [1, 2]


def test_version_unique_violation_is_wrong_expected_version(pg_database: str, schema: str) -> None:
    statements = PostgresStatements(schema)
    batch = encode_batch(Serializer(), [Deposited(amount=1)])
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(*append_sql(statements, "s", NO_STREAM, batch))
        insert = sql.SQL(
            "INSERT INTO {}.events (stream, version, id, type, schema_version, data) "
            "VALUES ('s', 1, gen_random_uuid(), 't', 1, '')"
        ).format(sql.Identifier(schema))
        with pytest.raises(WrongExpectedVersion) as info, translate_errors(schema, "s", 0):
            conn.execute(insert)
        assert (info.value.stream, info.value.expected, info.value.actual) == ("s", 0, 1)
        assert isinstance(info.value.__cause__, psycopg.errors.UniqueViolation)


def test_other_database_errors_are_store_errors(pg_database: str) -> None:
    with (
        psycopg.connect(pg_database) as conn,
        pytest.raises(StoreError) as info,
        translate_errors("eventfold"),
    ):
        conn.execute("SELECT 1 / 0")
    assert type(info.value) is StoreError
    assert not info.value.retryable
    assert "22012" in str(info.value)


# -- the translation table, state by state ---------------------------------------------------

_SCHEMA = "eventfold"
_MAPPING: list[tuple[str | None, str, type[EventfoldError], bool, str]] = [
    # (SQLSTATE, server message, eventfold error, retryable, part of its message)
    (
        "57P01",
        "terminating connection due to administrator command",
        StoreUnavailable,
        True,
        "retry later",
    ),
    ("57P02", "terminating connection because of crash", StoreUnavailable, True, "retry later"),
    ("57P03", "the database system is starting up", StoreUnavailable, True, "retry later"),
    (
        "57P05",
        "terminating connection due to idle-session timeout",
        StoreUnavailable,
        True,
        "retry",
    ),
    ("53300", "sorry, too many clients already", StoreUnavailable, True, "retry later"),
    ("08006", "connection failure", StoreUnavailable, True, "retry later"),
    ("08003", "connection does not exist", StoreUnavailable, True, "retry later"),
    ("08P01", "invalid frontend message type", StoreError, False, "08P01"),
    (
        "57014",
        "canceling statement due to statement timeout",
        StoreTimeout,
        True,
        "statement_timeout",
    ),
    ("55P03", "canceling statement due to lock timeout", StoreTimeout, True, "lock_timeout"),
    (
        "25P03",
        "terminating connection due to idle-in-transaction timeout",
        StoreTimeout,
        True,
        "idle_in_transaction_session_timeout",
    ),
    (
        "25P04",
        "terminating connection due to transaction timeout",
        StoreTimeout,
        True,
        "transaction_timeout",
    ),
    ("53000", "insufficient resources", StoreError, True, "retry later"),
    ("53100", "could not extend file: No space left on device", StoreError, True, "free space"),
    ("53200", "out of shared memory", StoreError, True, "max_locks_per_transaction"),
    ("53400", "temporary file size exceeds temp_file_limit", StoreError, False, "raise it"),
    ("40001", "could not serialize access", StoreError, True, "40001"),
    ("40P01", "deadlock detected", StoreError, True, "40P01"),
    ("28000", "role is not permitted to log in", ConfigurationError, False, "fix the conninfo"),
    ("28P01", "password authentication failed", ConfigurationError, False, "fix the conninfo"),
    ("42501", "permission denied for table events", ConfigurationError, False, "grant"),
    ("57P04", "database dropped", ConfigurationError, False, "dropped"),
    (
        "25006",
        "cannot execute INSERT in a read-only transaction",
        StoreError,
        False,
        "target_session_attrs",
    ),
    ("42P01", f'relation "{_SCHEMA}.events" does not exist', ConfigurationError, False, "migrate("),
    ("3F000", f'schema "{_SCHEMA}" does not exist', ConfigurationError, False, "migrate("),
    ("42P01", 'relation "read_model" does not exist', StoreError, False, "read_model"),
    ("22012", "division by zero", StoreError, False, "22012"),
    ("XX000", "internal error", StoreError, False, "XX000"),
]


def _driver_error(state: str | None, message: str) -> psycopg.Error:
    if state is None:
        return psycopg.OperationalError(message)
    return psycopg.errors.lookup(state)(message)


def _translated(exc: BaseException, *, sent: bool = False) -> EventfoldError:
    errors = translate_errors(_SCHEMA, "s", ANY)
    if sent:
        errors.sent = True  # as the append sets it while its statement is in flight
    with pytest.raises(EventfoldError) as info, errors:
        raise exc
    assert info.value.__cause__ is exc
    return info.value


@pytest.mark.parametrize(("state", "message", "error", "retryable", "says"), _MAPPING)
def test_each_sqlstate_maps_to_a_truthful_error(
    state: str, message: str, error: type[EventfoldError], retryable: bool, says: str
) -> None:
    translated = _translated(_driver_error(state, message))
    assert type(translated) is error
    assert getattr(translated, "retryable", False) is retryable
    assert says in str(translated)
    assert not getattr(translated, "outcome_unknown", False)


@pytest.mark.parametrize(
    ("exc", "error", "retryable", "says"),
    [
        (psycopg.OperationalError("connection refused"), StoreUnavailable, True, "retry later"),
        (
            psycopg.OperationalError("server closed the connection unexpectedly"),
            StoreUnavailable,
            True,
            "retry later",
        ),
        (
            psycopg.OperationalError('FATAL:  too many connections for role "app"'),
            StoreUnavailable,
            True,
            "connection limit",
        ),
        (
            psycopg.OperationalError("FATAL:  password authentication failed"),
            ConfigurationError,
            False,
            "user and password",
        ),
        (psycopg.InterfaceError("the connection is closed"), StoreUnavailable, True, "retry later"),
        (
            psycopg.ProgrammingError("the query has 1 placeholder but 2 parameters"),
            StoreError,
            False,
            "placeholder",
        ),
        (
            ConnectionStalled("PostgreSQL sent nothing for 2 s"),
            StoreUnavailable,
            True,
            "sent nothing",
        ),
        (
            psycopg_pool.PoolTimeout("couldn't get a connection after 1.00 sec"),
            StoreTimeout,
            True,
            "raise max_size",
        ),
        (
            PoolUnreachable("no PostgreSQL connection could be opened within 1 s"),
            StoreUnavailable,
            True,
            "could be opened",
        ),
        (
            psycopg_pool.TooManyRequests("the pool has already 4 requests waiting"),
            StoreTimeout,
            True,
            "max_waiting",
        ),
        (psycopg_pool.PoolClosed("the pool 'p' is already closed"), StoreClosed, False, "closed"),
    ],
)
def test_errors_without_a_sqlstate_and_the_pools_errors(
    exc: Exception, error: type[EventfoldError], retryable: bool, says: str
) -> None:
    translated = _translated(exc)
    assert type(translated) is error
    assert getattr(translated, "retryable", False) is retryable
    assert says in str(translated)


@pytest.mark.parametrize(
    ("exc", "unknown"),
    [
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (ConnectionStalled("PostgreSQL sent nothing for 2 s"), True),
        (_driver_error("57P01", "terminating connection due to administrator command"), True),
        # The server answered: the statement failed, nothing was committed.
        (_driver_error("57014", "canceling statement due to statement timeout"), False),
        (_driver_error("40P01", "deadlock detected"), False),
        (_driver_error("53100", "No space left on device"), False),
        # No connection: nothing was sent.
        (psycopg_pool.PoolTimeout("couldn't get a connection"), False),
        (PoolUnreachable("no PostgreSQL connection could be opened"), False),
    ],
)
def test_an_append_lost_in_flight_is_outcome_unknown(exc: Exception, unknown: bool) -> None:
    translated = _translated(exc, sent=True)
    assert getattr(translated, "outcome_unknown", False) is unknown
    assert ("may or may not have been committed" in str(translated)) is unknown
    if unknown:
        assert isinstance(translated, StoreUnavailable) and translated.retryable


# -- errors provoked for real ---------------------------------------------------------------


def test_an_exhausted_pool_is_a_store_timeout(pg_database: str, schema: str) -> None:
    with PostgresEventStore(pg_database, schema=schema, max_size=1, connect_timeout=1) as store:
        store.last_position()
        with (
            store.pool.connection(),  # another caller holds the pool's only connection
            pytest.raises(StoreTimeout, match="raise max_size") as info,
        ):
            store.append("s", [Deposited(amount=1)])
        assert info.value.retryable and not info.value.outcome_unknown
        assert isinstance(info.value.__cause__, psycopg_pool.PoolTimeout)
        assert store.append("s", [Deposited(amount=1)]).to_version == 1  # nothing was written


def test_too_many_waiting_requests_is_a_store_timeout(pg_database: str, schema: str) -> None:
    with (
        ConnectionPool(pg_database, min_size=1, max_size=1, max_waiting=1, timeout=10) as pool,
        PostgresEventStore(pool=pool, schema=schema) as store,
    ):
        store.last_position()
        waited: list[int] = []
        with pool.connection():
            waiter = threading.Thread(target=lambda: waited.append(store.last_position()))
            waiter.start()
            deadline = time.monotonic() + 10
            while pool.get_stats().get("requests_waiting", 0) < 1:
                assert time.monotonic() < deadline, "the first caller never queued"
                time.sleep(0.005)
            with pytest.raises(StoreTimeout, match="max_waiting") as info:
                store.append("s", [Deposited(amount=1)])
            assert info.value.retryable
            assert isinstance(info.value.__cause__, psycopg_pool.TooManyRequests)
        waiter.join(10)
        assert waited == [0]


def test_a_closed_pool_is_store_closed(pg_database: str, schema: str) -> None:
    pool = ConnectionPool(pg_database, min_size=1, max_size=1, open=True)
    with PostgresEventStore(pool=pool, schema=schema) as store:
        store.last_position()
        pool.close()
        with pytest.raises(StoreClosed) as info:
            store.append("s", [Deposited(amount=1)])
        assert not info.value.retryable
        assert isinstance(info.value.__cause__, psycopg_pool.PoolClosed)


def test_lock_timeout_is_store_timeout(pg_database: str, schema: str) -> None:
    url = psycopg.conninfo.make_conninfo(pg_database, options="-c lock_timeout=100")
    with PostgresEventStore(url, schema=schema) as store:
        store.append("s", [Deposited(amount=1)])
        with psycopg.connect(pg_database) as blocker:
            query = sql.SQL("LOCK TABLE {}.events IN ACCESS EXCLUSIVE MODE")
            blocker.execute(query.format(sql.Identifier(schema)))
            with pytest.raises(StoreTimeout, match="lock_timeout") as info:
                store.append("s", [Deposited(amount=2)])
        assert info.value.retryable and not info.value.outcome_unknown
        assert isinstance(info.value.__cause__, psycopg.errors.LockNotAvailable)
        assert [e.version for e in store.read("s")] == [1]


def test_an_idle_session_closed_by_the_server_is_unavailable_then_replaced(
    pg_database: str, schema: str
) -> None:
    url = psycopg.conninfo.make_conninfo(pg_database, options="-c idle_session_timeout=200")
    with (
        PostgresEventStore(url, schema=schema, max_size=1) as store,
        psycopg.connect(pg_database, autocommit=True) as admin,
    ):
        store.append("s", [Deposited(amount=1)])
        with store.pool.connection() as conn:
            pid = conn.info.backend_pid
        deadline = time.monotonic() + 10
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
            assert time.monotonic() < deadline, "the server kept the idle session"
            time.sleep(0.02)
        with pytest.raises(StoreUnavailable) as info:
            store.last_position()
        assert info.value.retryable
        assert store.append("s", [Deposited(amount=2)], expected=1).to_version == 2


def test_a_read_only_server_says_to_connect_to_the_primary(pg_database: str, schema: str) -> None:
    url = psycopg.conninfo.make_conninfo(pg_database, options="-c default_transaction_read_only=on")
    with PostgresEventStore(url, schema=schema) as store:
        with pytest.raises(StoreError, match="target_session_attrs") as info:
            store.append("s", [Deposited(amount=1)])
        assert not info.value.retryable
        assert isinstance(info.value.__cause__, psycopg.errors.ReadOnlySqlTransaction)


def test_a_role_at_its_connection_limit_is_unavailable(pg_database: str, schema: str) -> None:
    role = f"eventfold_limited_{new_schema_name()}"
    with psycopg.connect(pg_database, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 1").format(sql.Identifier(role))
        )
        try:
            url = psycopg.conninfo.make_conninfo(pg_database, user=role)
            with psycopg.connect(url), PostgresEventStore(url, schema=schema) as store:
                with pytest.raises(StoreUnavailable, match="connection limit") as info:
                    store.last_position()
                assert info.value.retryable
        finally:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_missing_table_outside_the_store_is_not_a_missing_schema(
    pg_database: str, schema: str
) -> None:
    with (
        psycopg.connect(pg_database) as conn,
        pytest.raises(StoreError, match="read_model") as info,
        translate_errors(schema),
    ):
        conn.execute("SELECT * FROM read_model")
    assert not info.value.retryable
    assert "migrate" not in str(info.value)


# -- ordering: readers never find an event behind their position -----------------------------


def test_older_open_transaction_holds_readers_back_and_order_is_kept(
    pg_database: str, pg_store: PostgresEventStore
) -> None:
    pg_store.append("before", [Deposited(amount=0)])
    cursor = pg_store.last_position()
    statements = PostgresStatements(pg_store.schema)
    early = encode_batch(pg_store.serializer, [Deposited(amount=1)])
    with psycopg.connect(pg_database) as slow:
        # `slow` gets the older transaction id, but commits after the store's append.
        slow.execute(*append_sql(statements, "slow", NO_STREAM, early))
        result = pg_store.append("fast", [Deposited(amount=2)])
        assert result.position > cursor
        # Not visible yet: it would be ahead of the slow transaction's event.
        assert list(pg_store.read_all(after=cursor)) == []
        assert pg_store.last_position() == cursor
        assert [e.stream for e in pg_store.read("fast")] == ["fast"]  # stream reads see it
    # `slow` committed on leaving the block: both appear, after the cursor, in tx order.
    tail = list(pg_store.read_all(after=cursor))
    assert [e.stream for e in tail] == ["slow", "fast"]
    assert all(e.position > cursor for e in tail)
    assert tail[-1].position == result.position == pg_store.last_position()


def test_batch_positions_follow_versions(pg_store: PostgresEventStore) -> None:
    result = pg_store.append("s", [Deposited(amount=i) for i in range(100)])
    events = list(pg_store.read_all())
    assert [e.version for e in events] == list(range(1, 101))
    positions = [e.position for e in events]
    assert positions == sorted(set(positions))
    assert result.position == positions[-1]
    assert list(pg_store.read_all(after=positions[49])) == events[50:]


def test_positions_far_beyond_the_log_read_nothing(pg_store: PostgresEventStore) -> None:
    pg_store.append("s", [Deposited(amount=1)])
    assert list(pg_store.read_all(after=2**64 - 1)) != []  # tx 0, seq max: before everything
    assert list(pg_store.read_all(after=pg_store.last_position())) == []
    assert list(pg_store.read_all(after=2**200)) == []


def test_idempotent_retry_after_version_race(pg_store: PostgresEventStore) -> None:
    batch = [NewEvent(data=Deposited(amount=i)) for i in range(3)]
    first = pg_store.append("s", batch, expected=NO_STREAM)
    pg_store.append("s", [Deposited(amount=9)])
    assert pg_store.append("s", batch, expected=0) == first
    assert [e.version for e in pg_store.read("s")] == [1, 2, 3, 4]


# -- appends: one statement in autocommit, never a partial batch ---------------------------


def _count_rows(url: str, schema: str, stream: str) -> int:
    with psycopg.connect(url) as conn:
        query = sql.SQL("SELECT count(*) FROM {}.events WHERE stream = %s")
        row = conn.execute(query.format(sql.Identifier(schema)), (stream,)).fetchone()
    assert row is not None
    count: int = row[0]
    return count


@pytest.mark.parametrize("taken_in", ["other", "s"])
def test_batch_whose_second_id_is_stored_leaves_nothing(
    pg_database: str, pg_store: PostgresEventStore, taken_in: str
) -> None:
    taken = NewEvent(data=Deposited(amount=0))
    pg_store.append(taken_in, [taken])
    before = pg_store.last_position()
    first, third = NewEvent(data=Deposited(amount=1)), NewEvent(data=Deposited(amount=3))
    with pytest.raises(InvalidRequest, match="reuses event ids"):
        pg_store.append("s", [first, taken, third])
    assert pg_store.find_event(first.id) is None
    assert pg_store.find_event(third.id) is None
    assert _count_rows(pg_database, pg_store.schema, "s") == (1 if taken_in == "s" else 0)
    assert pg_store.last_position() == before
    # The statement on its own, in autocommit: the unique violation undoes all of it.
    statements = PostgresStatements(pg_store.schema)
    batch = encode_batch(pg_store.serializer, [first, taken, third])
    with (
        psycopg.connect(pg_database, autocommit=True) as conn,
        pytest.raises(psycopg.errors.UniqueViolation),
    ):
        conn.execute(*append_sql(statements, "s", ANY, batch))
    assert _count_rows(pg_database, pg_store.schema, "s") == (1 if taken_in == "s" else 0)
    assert pg_store.last_position() == before


def _wait_until_blocked_by(url: str, pid: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
        for _ in range(1000):
            row = conn.execute(query, (pid,)).fetchone()
            if row is not None and row[0]:
                return
            time.sleep(0.01)
    raise AssertionError("the append never waited for the rival transaction")


@pytest.mark.parametrize("expected", [NO_STREAM, 0, ANY])
def test_version_race_between_two_connections(
    pg_database: str, pg_store: PostgresEventStore, expected: Expected
) -> None:
    statements = PostgresStatements(pg_store.schema)
    rival = encode_batch(pg_store.serializer, [Deposited(amount=1)])
    outcome: dict[str, object] = {}

    def append() -> None:
        try:
            batch = [Deposited(amount=2), Deposited(amount=3)]
            outcome["result"] = pg_store.append("s", batch, expected=expected)
        except Exception as exc:  # checked below
            outcome["error"] = exc

    pg_store.last_position()  # open the pool before the rival transaction starts
    with psycopg.connect(pg_database) as other:
        # The rival takes version 1 and holds it uncommitted: the store's statement
        # probes version 0 too, then waits on the unique index for the rival.
        other.execute(*append_sql(statements, "s", NO_STREAM, rival))
        thread = threading.Thread(target=append)
        thread.start()
        _wait_until_blocked_by(pg_database, other.info.backend_pid)
        other.commit()
        thread.join(30)
    versions = [(e.version, e.data.amount) for e in pg_store.read("s")]
    if expected is ANY:
        result = outcome["result"]
        assert isinstance(result, AppendResult)
        assert (result.from_version, result.to_version) == (2, 3)
        assert versions == [(1, 1), (2, 2), (3, 3)]
    else:
        error = outcome["error"]
        assert isinstance(error, WrongExpectedVersion)
        assert (error.expected, error.actual) == (expected, 1)
        assert versions == [(1, 1)]


@pytest.mark.parametrize("pool", ["own", "yours"])
@pytest.mark.parametrize("expected", [0, ANY])
def test_append_many_loses_a_version_race_whole_and_tries_again(
    pg_database: str, schema: str, pool: str, expected: Expected
) -> None:
    """A rival holds version 1 of "b" uncommitted: the multi-append waits, finds the
    version taken, rolls back "a" too, and (expectations still met) appends again."""
    statements = PostgresStatements(schema)
    rival = encode_batch(Serializer(), [Deposited(amount=1)])
    outcome: dict[str, object] = {}
    # "yours": a pool without autocommit, whose connections start implicit transactions.
    with contextlib.ExitStack() as stack:
        if pool == "own":
            store = stack.enter_context(PostgresEventStore(pg_database, schema=schema))
        else:
            yours = stack.enter_context(
                ConnectionPool(pg_database, min_size=1, max_size=2, open=True)
            )
            store = stack.enter_context(PostgresEventStore(pool=yours, schema=schema))

        def append_many() -> None:
            try:
                outcome["results"] = store.append_many(
                    [
                        StreamAppend("a", [Deposited(amount=2)], expected=NO_STREAM),
                        StreamAppend("b", [Deposited(amount=3)], expected=expected),
                    ]
                )
            except Exception as exc:  # checked below
                outcome["error"] = exc

        store.last_position()  # open the pool before the rival transaction starts
        with psycopg.connect(pg_database) as other:
            other.execute(*append_sql(statements, "b", NO_STREAM, rival))
            thread = threading.Thread(target=append_many)
            thread.start()
            _wait_until_blocked_by(pg_database, other.info.backend_pid)
            other.commit()
            thread.join(30)
        assert not thread.is_alive()
        # What another connection sees: committed rows only.
        counts = (_count_rows(pg_database, schema, "a"), _count_rows(pg_database, schema, "b"))
        if expected is ANY:
            results = outcome["results"]
            assert isinstance(results, list)
            assert [(r.stream, r.from_version) for r in results] == [("a", 1), ("b", 2)]
            assert counts == (1, 2)
            assert [e.data.amount for e in store.read("b")] == [1, 3]
        else:
            error = outcome["error"]
            assert isinstance(error, WrongExpectedVersion)
            assert (error.stream, error.expected, error.actual) == ("b", 0, 1)
            assert counts == (0, 1)


def test_append_many_keeps_each_streams_versions_in_log_order(
    pg_store: PostgresEventStore,
) -> None:
    """A newer transaction appends to "b" and commits while the multi-append, which has
    its transaction id already, is between its statements: the multi-append's events
    come before that append's in the log, so it must not number its events after it."""
    rival_done = threading.Event()
    hooked: list[str] = []

    def rival() -> None:
        pg_store.append("b", [Deposited(amount=1)])
        rival_done.set()

    def hook(tx: Any, events: list[RecordedEvent]) -> None:
        hooked.append(events[0].stream)
        if events[0].stream == "a" and not rival_done.is_set():
            thread = threading.Thread(target=rival)  # between the statements of "a" and "b"
            thread.start()
            thread.join(30)

    pg_store.add_append_hook(hook)
    _, b = pg_store.append_many(
        [StreamAppend("a", [Deposited(amount=2)]), StreamAppend("b", [Deposited(amount=2)])]
    )

    assert rival_done.is_set()
    assert b.from_version == 2  # tried again, after the rival's version 1
    by_position = sorted(pg_store.read("b"), key=lambda e: e.position)
    assert [(e.version, e.data.amount) for e in by_position] == [(1, 1), (2, 2)]
    assert hooked.count("a") == 2  # the first attempt was rolled back


def test_append_many_in_opposite_orders_does_not_deadlock(
    pg_database: str, pg_store: PostgresEventStore
) -> None:
    """Two calls on the same streams, given in opposite orders, both hold versions while
    the other waits: the statements run in one order, so one waits for the other."""
    statements = PostgresStatements(pg_store.schema)
    rival = encode_batch(pg_store.serializer, [Deposited(amount=1)])
    outcome: dict[str, object] = {}

    def append_many() -> None:
        try:
            outcome["results"] = pg_store.append_many(
                [StreamAppend("b", [Deposited(amount=2)]), StreamAppend("a", [Deposited(amount=2)])]
            )
        except Exception as exc:  # checked below
            outcome["error"] = exc

    pg_store.last_position()
    with psycopg.connect(pg_database) as other:
        # The rival writes "a" then "b" (name order) and holds both uncommitted; the
        # store's call, given "b" first, must wait at "a" without holding "b".
        other.execute(*append_sql(statements, "a", ANY, rival))
        thread = threading.Thread(target=append_many)
        thread.start()
        _wait_until_blocked_by(pg_database, other.info.backend_pid)
        second = encode_batch(pg_store.serializer, [Deposited(amount=1)])
        other.execute(*append_sql(statements, "b", ANY, second))  # would deadlock otherwise
        other.commit()
        thread.join(30)
    assert "error" not in outcome, outcome
    results = outcome["results"]
    assert isinstance(results, list)
    assert [(r.stream, r.from_version) for r in results] == [("b", 2), ("a", 2)]


def test_failed_expectation_writes_and_announces_nothing(pg_database: str, schema: str) -> None:
    with (
        PostgresEventStore(pg_database, schema=schema) as store,
        psycopg.connect(pg_database, autocommit=True) as listener,
    ):
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(f"{schema}.events")))
        store.append("s", [Deposited(amount=1)])
        before = store.last_position()
        expectations: list[Expected] = [NO_STREAM, 0, 2, 2**63, 2**80]
        for expected in expectations:
            with pytest.raises(WrongExpectedVersion) as info:
                store.append("s", [Deposited(amount=2)], expected=expected)
            assert info.value.actual == 1
        with pytest.raises(WrongExpectedVersion):
            store.append("t", [Deposited(amount=2)], expected=STREAM_EXISTS)
        assert store.last_position() == before
        assert [e.version for e in store.read("s")] == [1]
        heard = list(listener.notifies(timeout=0.3, stop_after=2))
        assert len(heard) == 1  # the first append only


@pytest.mark.parametrize(
    "expected", [ANY, NO_STREAM, STREAM_EXISTS, 0, 1, 5, 2**63 - 1, 2**63, 2**80]
)
def test_append_params_encode_the_expectation(expected: Expected) -> None:
    _, params = append_params("s", expected, [])
    for actual in [0, 1, 4, 5, 6, 2**63 - 1]:
        met = params["low"] <= actual <= params["high"]
        assert met == expectation_met(expected, actual), actual


# -- live subscription -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_subscription_is_woken_by_notify_not_by_polling(pg_database: str) -> None:
    name = new_schema_name()
    await async_migrate(pg_database, schema=name)
    async with AsyncPostgresEventStore(pg_database, schema=name) as store:
        await store.append("s", [Deposited(amount=1)])
        # The wrapper returns the coroutine, which the store awaits.
        reads = count_calls(store, "_read_all_page")
        # A poll interval far beyond the test's patience: only NOTIFY can deliver in time.
        subscription = store.subscribe(poll_interval=120)
        first = await asyncio.wait_for(anext(subscription), 10)
        assert first.data == Deposited(amount=1)
        pending = asyncio.ensure_future(anext(subscription))
        # Appended through another store (another pool, other connections).
        with PostgresEventStore(pg_database, schema=name) as writer:
            written = await asyncio.to_thread(writer.append, "t", [Deposited(amount=2)])
        second = await asyncio.wait_for(pending, 10)
        assert (second.stream, second.position) == ("t", written.position)
        assert len(reads) <= 4, f"{len(reads)} reads for two events: the subscriber is polling"
        await subscription.aclose()


def test_sync_subscription_catches_up_then_follows(pg_store: PostgresEventStore) -> None:
    pg_store.append("a", [Deposited(amount=1), Deposited(amount=2)])
    subscription = pg_store.subscribe(poll_interval=120)
    caught_up = [next(subscription), next(subscription)]
    assert [e.version for e in caught_up] == [1, 2]
    done = threading.Event()
    appended: list[int] = []

    def append_later() -> None:
        appended.append(pg_store.append("b", [Deposited(amount=3)]).position)
        done.set()

    thread = threading.Thread(target=append_later)
    thread.start()
    live = next(subscription)
    thread.join()
    assert done.is_set()
    assert (live.stream, live.position) == ("b", appended[0])
    subscription.close()


# -- packaging ------------------------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_import_eventfold_does_not_import_psycopg() -> None:
    proc = _python("import sys, eventfold; print('psycopg' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_missing_psycopg_names_the_extra() -> None:
    proc = _python(
        "import sys; sys.modules['psycopg'] = None\n"
        "try:\n"
        "    import eventfold.store.postgres\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'eventfold[postgres]'" in proc.stdout


@pytest.mark.parametrize("notify", [True, False])
def test_one_notification_per_append_unless_disabled(
    pg_database: str, schema: str, notify: bool
) -> None:
    with (
        PostgresEventStore(pg_database, schema=schema, notify=notify) as store,
        psycopg.connect(pg_database, autocommit=True) as listener,
    ):
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(f"{schema}.events")))
        store.append("s", [Deposited(amount=i) for i in range(3)])
        store.append("t", [Deposited(amount=9)])
        # Two transactions: two notifications, not one per event (or none at all).
        heard = [n.channel for n in listener.notifies(timeout=0.5, stop_after=3)]
        assert heard == ([f"{schema}.events"] * 2 if notify else [])


def test_subscription_without_notify_polls(pg_database: str, schema: str) -> None:
    with PostgresEventStore(pg_database, schema=schema, notify=False) as store:
        first = store.append("s", [Deposited(amount=1)])
        subscription = store.subscribe(poll_interval=0.05)
        assert next(subscription).position == first.position
        # Appended while the subscriber is parked after its catch-up read: no
        # notification comes, the poll interval finds it.
        second = store.append("s", [Deposited(amount=2)])
        assert next(subscription).position == second.position
        subscription.close()


def test_schema_version_1_is_migrated_to_the_latest(pg_database: str) -> None:
    schema = new_schema_name()
    statements = PostgresStatements(schema)
    with psycopg.connect(pg_database) as conn:
        conn.execute(statements["bootstrap"])
        conn.execute(statements["migration_1"])
        conn.execute(statements["record_migration"], {"version": 1})
    with (
        PostgresEventStore(pg_database, schema=schema) as store,
        pytest.raises(ConfigurationError, match=f"needs {LATEST_SCHEMA_VERSION}"),
    ):
        store.last_position()
    assert migrate(pg_database, schema=schema) == LATEST_SCHEMA_VERSION
    with PostgresEventStore(pg_database, schema=schema) as store:
        store.append("s", [Deposited(amount=1)])
        store.delete_stream("s", reason="schema 2 supports deletion")
        info = store.get_stream("s")
        assert info is not None and info.deleted is not None
        store.save_snapshot("s", 1, "T", 1, b"{}")
        assert store.load_snapshot("s") is not None


def test_events_stored_before_schema_version_4_read_the_same_after(pg_database: str) -> None:
    schema = new_schema_name()
    statements = PostgresStatements(schema)
    with psycopg.connect(pg_database) as conn:
        conn.execute(statements["bootstrap"])
        for version in (1, 2, 3):
            conn.execute(statements[f"migration_{version}"])
            conn.execute(statements["record_migration"], {"version": version})
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.events (stream, version, id, type, schema_version, data,"
                " recorded_at) VALUES ('old', 1, %s, 'eventfold.testing.Deposited', 1,"
                " '{{\"amount\":7}}', '2026-01-02 03:04:05.678901+00')"
            ).format(sql.Identifier(schema)),
            (uuid7(),),
        )
    assert migrate(pg_database, schema=schema) == LATEST_SCHEMA_VERSION
    with PostgresEventStore(pg_database, schema=schema) as store:
        (old,) = store.read("old")
        assert old.data == Deposited(amount=7)
        assert old.recorded_at == datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
        store.append("old", [Deposited(amount=8)], expected=1)
        (first, second) = store.read_all()
        assert first.position < second.position
        assert second.recorded_at > old.recorded_at
        assert [e.position for e in store.read("old")] == [first.position, second.position]


# -- streamed catch-ups ---------------------------------------------------------------------


def _positions_projection(seen: list[RecordedEvent], **options: Any) -> Projection:
    return Projection(
        f"p_{new_schema_name()}", lambda ctx, event: seen.append(event), in_memory=True, **options
    )


def test_a_streamed_catch_up_keeps_the_visibility_rule(
    pg_database: str, pg_store: PostgresEventStore
) -> None:
    for n in range(10):
        pg_store.append("before", [Deposited(amount=n)])
    seen: list[RecordedEvent] = []
    runner = ProjectionRunner(pg_store, _positions_projection(seen, batch_size=2))
    statements = PostgresStatements(pg_store.schema)
    early = encode_batch(pg_store.serializer, [Deposited(amount=1)])
    with psycopg.connect(pg_database) as slow:
        slow.execute(*append_sql(statements, "slow", NO_STREAM, early))
        pg_store.append("fast", [Deposited(amount=2)])
        # Pages of 2 after the first: streamed. Still nothing past the open transaction.
        assert runner.run_once() == 10
    assert runner.run_once() == 2
    assert [e.stream for e in seen] == ["before"] * 10 + ["slow", "fast"]
    assert [e.position for e in seen] == [e.position for e in pg_store.read_all()]


def test_a_stopped_streamed_catch_up_gives_its_connection_back(
    pg_database: str, schema: str
) -> None:
    with PostgresEventStore(pg_database, schema=schema, max_size=2, connect_timeout=2) as store:
        store.append("s", [Deposited(amount=n) for n in range(300)])
        seen: list[RecordedEvent] = []

        def handle(ctx: Any, event: RecordedEvent) -> None:
            if event.version == 150:
                raise ValueError("poison")
            seen.append(event)

        runner = ProjectionRunner(store, Projection("stops", handle, batch_size=10, in_memory=True))
        with pytest.raises(ProjectionStopped) as stopped:
            runner.run_once()
        # The traceback (kept here) holds the runner's frames: only closing the
        # read explicitly frees its connection, not garbage collection.
        assert stopped.value.event.version == 150
        assert [e.version for e in seen] == list(range(1, 150))
        # Both connections of the pool are free: the abandoned stream was closed.
        with store.pool.connection() as first, store.pool.connection() as second:
            assert first.execute("SELECT 1").fetchone() == second.execute("SELECT 1").fetchone()


def test_a_one_connection_pool_catches_up_page_by_page(pg_database: str, schema: str) -> None:
    # Streaming would hold the pool's only connection while the handler needs it.
    with PostgresEventStore(pg_database, schema=schema, max_size=1, connect_timeout=2) as store:
        store.append("s", [Deposited(amount=n) for n in range(50)])
        versions: list[int] = []

        def handle(ctx: Any, event: RecordedEvent) -> None:
            if event.version % 10 == 0:
                info = store.get_stream(event.stream)
                versions.append(info.version if info is not None else -1)

        handled = ProjectionRunner(
            store, Projection("reads", handle, batch_size=4, in_memory=True)
        ).run_once()
        assert handled == 50
        assert versions == [50] * 5


@pytest.mark.asyncio
async def test_async_pages_stream_the_same_log_in_order(pg_database: str, schema: str) -> None:
    async with AsyncPostgresEventStore(pg_database, schema=schema, max_size=2) as store:
        for n in range(30):
            await store.append(f"s{n % 3}", [Deposited(amount=n), Deposited(amount=-n)])
        log = [(e.position, e.stream) async for e in store.read_all()]
        # Pages of 2: the first read alone, then statements of 400 rows streamed.
        pages = [page async for page in store._read_all_pages(0, None, None, 2)]
        assert [(row[0], row[1]) for page in pages for row in page] == log
        assert all(len(page) == 2 for page in pages)
        only = [page async for page in store._read_all_pages(0, None, "s1", 2)]
        assert [row[0] for page in only for row in page] == [p for p, s in log if s == "s1"]


def test_streamed_statements_end_on_time_and_the_next_reads_on(
    pg_store: PostgresEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A time bound of 0: every statement ends after its first chunk.
    monkeypatch.setattr(sync_postgres, "_STREAM_SECONDS", 0.0)
    for n in range(20):
        pg_store.append(f"s{n % 4}", [Deposited(amount=i) for i in range(10)])
    log = [e.position for e in pg_store.read_all()]
    pages = list(pg_store._read_all_pages(0, None, None, 4))
    assert [row[0] for page in pages for row in page] == log
    assert [len(page) for page in pages] == [4] * 50


def test_statement_timeout_in_a_streamed_catch_up_reads_on(
    pg_database: str, schema: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sync_postgres, "_STREAM_SECONDS", 3600.0)  # only the server's timeout
    timeout = psycopg.conninfo.make_conninfo(pg_database, options="-c statement_timeout=300")
    with PostgresEventStore(timeout, schema=schema, max_size=2) as store:
        # 64 MB in one streamed statement: far more than socket buffers, so the
        # server is still sending when the handler below holds it up.
        for start in range(0, 8_000, 500):
            store.append(f"s{start}", [Opened(owner=f"{n:08}" * 1_000) for n in range(500)])
        log = [e.position for e in store.read_all()]
        seen: list[int] = []

        def handle(ctx: Any, event: RecordedEvent) -> None:
            if len(seen) == 200:
                time.sleep(1.0)  # a slow handler: longer than statement_timeout
            seen.append(event.position)

        projection = Projection("slow", handle, batch_size=50, in_memory=True)
        with caplog.at_level(logging.INFO, logger="eventfold.store.postgres"):
            assert ProjectionRunner(store, projection).run_once() == 8_000
        assert seen == log
        assert any("statement_timeout ended" in r.getMessage() for r in caplog.records)


def test_without_chunked_rows_a_backlog_is_read_page_by_page(
    pg_database: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync_postgres, "CHUNKED_ROWS", False)  # as with libpq older than 17
    with PostgresEventStore(pg_database, schema=schema, max_size=2, connect_timeout=2) as store:
        store.append("s", [Deposited(amount=n) for n in range(30)])
        pages = store._read_all_pages(0, None, None, 4)
        first, second = next(pages), next(pages)
        # Between pages no connection is held: both of the pool's are free.
        with store.pool.connection() as one, store.pool.connection() as two:
            assert one.execute("SELECT 1").fetchone() == two.execute("SELECT 1").fetchone()
        rest = list(pages)
        rows = [row[0] for page in [first, second, *rest] for row in page]
        assert rows == [e.position for e in store.read_all()]
