"""psycopg's exceptions translated into the eventfold hierarchy: the one boundary."""

from __future__ import annotations

import re
from types import TracebackType
from typing import Final

from eventfold.errors import (
    ConfigurationError,
    EventfoldError,
    StoreClosed,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    WrongExpectedVersion,
)
from eventfold.store._types import Expected
from eventfold.store.postgres._connections import PoolUnreachable
from eventfold.store.postgres._driver import (
    pg_errors,
    psycopg,
    psycopg_pool,
)
from eventfold.store.postgres._statements import LATEST_SCHEMA_VERSION

__all__ = ["schema_version_error", "translate_errors"]

# -- errors ------------------------------------------------------------------------------

# SQLSTATE classes and codes, see https://www.postgresql.org/docs/current/errcodes-appendix.html
_UNAVAILABLE_STATES: Final = frozenset(
    {
        "57P01",  # admin_shutdown: the server is stopping or restarting (or a backend kill)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now: starting up, shutting down, recovering
        "57P05",  # idle_session_timeout: the server closed an idle session
        "53300",  # too_many_connections
    }
)
_TIMEOUT_STATES: Final = {
    "57014": "PostgreSQL cancelled the statement (statement_timeout or a cancel request)",
    "55P03": "a lock was not granted in time (lock_timeout)",
    "25P03": "PostgreSQL ended the session: a transaction stayed idle longer than "
    "idle_in_transaction_session_timeout",
    "25P04": "PostgreSQL ended the session: a transaction ran longer than transaction_timeout",
}
# Class 53: the server ran short of something. Retrying helps once it is freed.
_RESOURCE_STATES: Final = {
    "53000": "PostgreSQL ran short of a resource: retry later",
    "53100": "the PostgreSQL server's disk is full: free space (or grow the volumes) "
    "holding its data directory and WAL (pg_wal; a replication slot no replica "
    "reads keeps WAL forever), then retry",
    "53200": "PostgreSQL ran out of memory (or of shared memory for locks): retry "
    "later; if it persists, lower work_mem or the number of connections, or raise "
    "max_locks_per_transaction",
}
_LIMIT_STATE: Final = "53400"  # configuration_limit_exceeded (e.g. temp_file_limit)
_RETRYABLE_STATES: Final = frozenset({"40001", "40P01"})  # serialization failure, deadlock
_MISSING_STATES: Final = frozenset({"42P01", "3F000"})  # undefined_table, invalid_schema_name
_PROTOCOL_VIOLATION: Final = "08P01"
_DATABASE_DROPPED: Final = "57P04"
_READ_ONLY: Final = "25006"
_VERSION_TAKEN = re.compile(r"=\((?P<stream>.*), (?P<version>\d+)\) already exists")
# libpq reports failed connection attempts without a SQLSTATE: recognise by message.
_SETUP_MESSAGES: Final = (
    (re.compile(r"password authentication failed"), "check the user and password in the conninfo"),
    (re.compile(r"no pg_hba\.conf entry"), "allow this client in the server's pg_hba.conf"),
    (re.compile(r'role ".*" does not exist'), "create the role or fix the user in the conninfo"),
    (re.compile(r'database ".*" does not exist'), "create the database or fix its name"),
    (re.compile(r"permission denied"), "grant this role CONNECT on the database"),
)
_TOO_MANY_CONNECTIONS = re.compile(
    r"too many (clients|connections)|remaining connection slots are reserved"
)


def _run_migrate(schema: str) -> str:
    return (
        f"run eventfold.store.postgres.migrate(conninfo, schema={schema!r}) "
        "(or store.migrate()) once before using the store"
    )


def _missing_schema(schema: str) -> str:
    return f"the eventfold schema {schema!r} is missing in this database: {_run_migrate(schema)}"


def _outcome_unknown(error: StoreError, stream: str | None) -> StoreError:
    """``error`` for a connection lost after the append was sent: its outcome is unknown."""
    where = f" to stream {stream!r}" if stream is not None else ""
    unknown = type(error)(
        f"{error}; the append{where} may or may not have been committed (the connection "
        "failed after it was sent): appending the same NewEvent objects again is safe, "
        "their ids make it exactly-once (it returns the original result if the first "
        "attempt was stored); plain event objects get fresh ids on each call and would "
        "be stored twice"
    )
    unknown.retryable = error.retryable
    unknown.outcome_unknown = True
    return unknown


class translate_errors:
    """Translate psycopg exceptions into the eventfold hierarchy: the one boundary.

    Every database call of the store runs inside this context manager.
    ``stream`` and ``expected`` name the append being made, for the
    WrongExpectedVersion raised if a (stream, version) uniqueness violation
    ever escapes the append logic. The append sets :attr:`sent` while its
    statement awaits the answer: a connection failure then has an unknown
    outcome (``StoreError.outcome_unknown``).
    """

    __slots__ = ("expected", "schema", "sent", "stream")

    def __init__(
        self, schema: str, stream: str | None = None, expected: Expected | None = None
    ) -> None:
        self.schema = schema
        self.stream = stream
        self.expected = expected
        #: True while an append statement is on its way or awaits its answer.
        self.sent = False

    def __enter__(self) -> translate_errors:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, EventfoldError):
            return
        # First: the pool's errors subclass psycopg.OperationalError.
        if isinstance(
            exc, (psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed, psycopg_pool.TooManyRequests)
        ):
            raise _pool_error(exc) from exc
        if isinstance(exc, psycopg.Error):
            error = self._translate(exc)
            if self.sent and isinstance(error, StoreUnavailable):
                error = _outcome_unknown(error, self.stream)
            raise error from exc

    def _translate(self, exc: psycopg.Error) -> EventfoldError:
        state = exc.sqlstate
        message = str(exc).strip()
        if state is None:
            return _connection_error(exc, message)
        if state in _MISSING_STATES and re.search(f'"{self.schema}[."]', message):
            return ConfigurationError(f"{_missing_schema(self.schema)} ({message})")
        if state in _UNAVAILABLE_STATES or (
            state.startswith("08") and state != _PROTOCOL_VIOLATION
        ):
            return StoreUnavailable(f"PostgreSQL is unavailable, retry later: {message}")
        if state in _TIMEOUT_STATES:
            return StoreTimeout(f"{_TIMEOUT_STATES[state]} ({state}): {message}")
        if state.startswith("28") or state == "42501":
            return ConfigurationError(
                f"PostgreSQL refused this role ({state}): {message}; fix the conninfo "
                "or grant the role access to the database and schema"
            )
        if state == _DATABASE_DROPPED:
            return ConfigurationError(f"the database was dropped ({state}): {message}")
        if isinstance(exc, pg_errors.UniqueViolation):
            taken = _version_taken(exc)
            if taken is not None and self.stream is not None:
                return WrongExpectedVersion(self.stream, self.expected, taken)
        return _other_error(state, message)


def _other_error(state: str, message: str) -> StoreError:
    """A StoreError for a state the other branches do not name; retryable where it helps."""
    if state in _RESOURCE_STATES:
        error = StoreError(f"{_RESOURCE_STATES[state]} ({state}): {message}")
        error.retryable = True
        return error
    if state == _LIMIT_STATE:
        return StoreError(
            f"a limit set in the server's configuration was exceeded ({state}): {message}; "
            "raise it (for example temp_file_limit) or ask for less at once"
        )
    if state == _READ_ONLY:
        return StoreError(
            f"PostgreSQL refused a write ({state}): {message}; the server is read-only "
            "(a standby, a demoted primary, or default_transaction_read_only): connect to "
            "the primary (for example target_session_attrs=read-write in the conninfo)"
        )
    error = StoreError(f"PostgreSQL error {state}: {message}")
    error.retryable = state in _RETRYABLE_STATES
    return error


def _pool_error(exc: BaseException) -> StoreError:
    if isinstance(exc, psycopg_pool.PoolClosed):
        return StoreClosed(f"the PostgreSQL connection pool is closed ({exc})")
    if isinstance(exc, PoolUnreachable):
        return StoreUnavailable(
            f"PostgreSQL is unavailable, retry later: {exc} (the pool's log, logger "
            "'psycopg.pool', says why its connection attempts failed)"
        )
    if isinstance(exc, psycopg_pool.TooManyRequests):
        return StoreTimeout(
            f"too many requests are waiting for a PostgreSQL connection ({exc}): raise the "
            "pool's max_size or max_waiting, or send fewer requests at once"
        )
    return StoreTimeout(
        f"no PostgreSQL connection became free in time ({exc}): all of the pool's "
        "connections are in use; raise max_size or hold connections for less time (a pool "
        "you pass yourself also reports so when it cannot connect)"
    )


def _version_taken(exc: psycopg.Error) -> int | None:
    """The version named by a violation of events_stream_version, if that is what it is."""
    if exc.diag.constraint_name != "events_stream_version":
        return None
    match = _VERSION_TAKEN.search(exc.diag.message_detail or "")
    return int(match["version"]) if match else None


def _connection_error(exc: psycopg.Error, message: str) -> EventfoldError:
    if isinstance(exc, psycopg.OperationalError):
        for pattern, advice in _SETUP_MESSAGES:
            if pattern.search(message):
                return ConfigurationError(f"cannot connect to PostgreSQL: {message}; {advice}")
        if _TOO_MANY_CONNECTIONS.search(message):
            return StoreUnavailable(
                f"PostgreSQL accepts no more connections, retry later: {message}; the "
                "server's max_connections (or a role's or database's connection limit) is "
                "reached: use fewer or smaller pools, or raise the limit"
            )
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return StoreUnavailable(f"cannot reach PostgreSQL, retry later: {message}")
    return StoreError(f"PostgreSQL error: {message}")


def schema_version_error(schema: str, found: int) -> ConfigurationError | None:
    """The error for a database at schema version ``found``, or None if it is current."""
    if found == LATEST_SCHEMA_VERSION:
        return None
    if found > LATEST_SCHEMA_VERSION:
        return ConfigurationError(
            f"schema {schema!r} is at eventfold schema version {found}; this eventfold "
            f"knows up to {LATEST_SCHEMA_VERSION}: upgrade eventfold"
        )
    return ConfigurationError(
        f"schema {schema!r} is at eventfold schema version {found}, this eventfold needs "
        f"{LATEST_SCHEMA_VERSION}: {_run_migrate(schema)}"
    )
