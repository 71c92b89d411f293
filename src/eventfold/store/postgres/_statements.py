"""I/O-free parts of the PostgreSQL store, shared by its sync and async flavours.

Composing the SQL for a schema, mapping rows and positions, and translating
psycopg's exceptions live here once; ``eventfold.store.postgres._store_async`` (and the
sync code generated from it) only moves rows.

Positions. A row is identified in the global log by the pair (tx, seq): the
id of the transaction that wrote it and a number from a sequence. Rows become
visible to ``read_all`` in (tx, seq) order, not in seq order (a transaction
that took its seq numbers first may commit last), so the cursor must carry
both. The public position is the single int ``(tx << 64) | seq``: opaque,
totally ordered the same way as the pair, and decoded back into the pair by
:func:`split_position`. The price: positions are large (above 2**64), so code
that stores checkpoints must keep them as Python ints / ``numeric``, not in a
64-bit column.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Generator, Sequence
from time import monotonic
from types import TracebackType
from typing import Any, Final, TypeVar
from uuid import UUID

try:
    import psycopg
    import psycopg_pool
    from psycopg import AsyncConnection, Connection, sql
    from psycopg import errors as pg_errors
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.errors import UniqueViolation
    from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "the PostgreSQL event store needs psycopg 3 and psycopg-pool: "
        "pip install 'eventfold[postgres]'"
    ) from exc

from eventfold._checks import check_seconds
from eventfold.errors import (
    ConfigurationError,
    EventfoldError,
    StoreClosed,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    WrongExpectedVersion,
)
from eventfold.store._rows import EncodedEvent, Row
from eventfold.store._sql import load_statements
from eventfold.store._types import ANY, NO_STREAM, STREAM_EXISTS, Expected

__all__ = [
    "LATEST_SCHEMA_VERSION",
    "TCP_DEFAULTS",
    "AsyncConnection",
    "AsyncConnectionPool",
    "Connection",
    "ConnectionPool",
    "ConnectionStalled",
    "PoolTimeout",
    "PoolUnreachable",
    "PostgresStatements",
    "check_schema_name",
    "connection_settings",
    "guard_stall",
    "schema_version_error",
    "UniqueViolation",
    "append_params",
    "join_position",
    "split_position",
    "to_rows",
    "translate_errors",
    "CHUNKED_ROWS",
]

#: The schema version this eventfold writes; ``migrate()`` brings a database here.
LATEST_SCHEMA_VERSION: Final = 4
_SEQ_BITS: Final = 64
#: Whether libpq can return a result in chunks of rows (libpq 17 and newer;
#: psycopg[binary] bundles one): streamed reads need it.
CHUNKED_ROWS: Final = psycopg.pq.version() >= 170000
_SEQ_MASK: Final = (1 << _SEQ_BITS) - 1
_BIGINT_MAX: Final = 2**63 - 1
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")
_TEXT = load_statements("postgres")


def check_schema_name(schema: object) -> str:
    """Return ``schema`` if it is a plain lowercase SQL identifier, else ConfigurationError.

    Plain names (letters, digits, ``_``; at most 48 characters so that the
    notification channel derived from it fits PostgreSQL's 63-byte limit)
    need no quoting when you query the tables by hand.
    """
    if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigurationError(
            f"schema must be a lowercase SQL identifier (letters, digits, _; at most 48 "
            f"characters, not starting with a digit), not {schema!r}"
        )
    return schema


class PostgresStatements:
    """Every SQL statement of the store, composed for one schema.

    This is the only place where a schema name enters SQL text, and it enters
    as a quoted :class:`psycopg.sql.Identifier`. Statements are rendered to
    bytes once, so executing one costs no composition. ``notify=False``
    leaves ``pg_notify`` out of the append statement.
    """

    def __init__(self, schema: str, *, notify: bool = True) -> None:
        self.schema = check_schema_name(schema)
        #: The LISTEN/NOTIFY channel on which appends to this schema are announced.
        self.channel = f"{schema}.events"
        notify_call = sql.SQL("pg_notify({}, '')").format(sql.Literal(self.channel))
        values = {
            "schema": sql.Identifier(schema),
            "schema_name": sql.Literal(schema),
            "channel": sql.Literal(self.channel),
            "channel_name": sql.Identifier(self.channel),
            "notify": notify_call if notify else sql.SQL("NULL"),
        }
        self._rendered: dict[str, bytes] = {
            name: sql.SQL(text).format(**values).as_bytes(None) for name, text in _TEXT.items()
        }

    def __getitem__(self, name: str) -> bytes:
        return self._rendered[name]

    def migrations(self, current: int) -> list[tuple[int, bytes]]:
        """The migration scripts after version ``current``, in order."""
        return [
            (version, self._rendered[f"migration_{version}"])
            for version in range(current + 1, LATEST_SCHEMA_VERSION + 1)
        ]


# -- connections ---------------------------------------------------------------------------

#: libpq parameters the store adds to its connections unless the conninfo sets
#: them. They bound how long a dead peer (network partition, frozen VM: nothing
#: acknowledges what is sent) goes unnoticed: an idle connection is probed after
#: 15 s, a probe every 5 s, and data (request or probe) unacknowledged for 30 s
#: ends the connection. A stalled call then fails with StoreUnavailable.
TCP_DEFAULTS: Final[dict[str, str]] = {
    "keepalives": "1",
    "keepalives_idle": "15",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",  # milliseconds
}
#: How much longer than ``statement_timeout`` the store waits for an answer
#: before it takes the connection for stalled (the server cancels first).
STALL_GRACE: Final = 5.0
_STATEMENT_TIMEOUT = re.compile(r"statement[_-]timeout\s*=")
RV = TypeVar("RV")


def _check_seconds(name: str, value: object) -> float | None:
    if value is None:
        return None
    return check_seconds(name, value, error=ConfigurationError)


def connection_settings(
    conninfo: str | None,
    *,
    connect_timeout: float,
    statement_timeout: float | None = None,
    stall_timeout: float | None = None,
) -> tuple[dict[str, Any], float | None]:
    """The connect() keyword arguments for the store's connections, and the stall timeout.

    :data:`TCP_DEFAULTS` are added where ``conninfo`` does not set them (a
    conninfo value always wins). ``statement_timeout`` (seconds) joins the
    ``options`` the conninfo (or ``PGOPTIONS``) gives; setting it there too is
    refused as ambiguous. The stall timeout is ``stall_timeout`` if given,
    else ``statement_timeout`` + :data:`STALL_GRACE`, else None (no limit).
    """
    check_seconds("connect_timeout", connect_timeout, error=ConfigurationError)
    statement = _check_seconds("statement_timeout", statement_timeout)
    stall = _check_seconds("stall_timeout", stall_timeout)
    if stall is not None and statement is not None and stall <= statement:
        raise ConfigurationError(
            f"stall_timeout ({stall:g} s) must exceed statement_timeout ({statement:g} s): "
            "a statement the server is still allowed to run would be taken for a stalled "
            "connection"
        )
    given = conninfo_to_dict(conninfo) if conninfo else {}
    kwargs: dict[str, Any] = {
        "autocommit": True,
        # libpq takes whole seconds and treats values below 2 as 2.
        "connect_timeout": max(2, math.ceil(connect_timeout)),
    }
    kwargs.update((key, value) for key, value in TCP_DEFAULTS.items() if key not in given)
    if statement is not None:
        options = str(given.get("options", os.environ.get("PGOPTIONS", "")))
        if _STATEMENT_TIMEOUT.search(options):
            raise ConfigurationError(
                f"statement_timeout is set both in the conninfo options ({options!r}) and "
                "as the store's statement_timeout=: keep one"
            )
        milliseconds = max(1, round(statement * 1000))
        kwargs["options"] = f"{options} -c statement_timeout={milliseconds}".strip()
    if stall is None and statement is not None:
        stall = statement + STALL_GRACE
    return kwargs, stall


class ConnectionStalled(psycopg.OperationalError):
    """Nothing arrived from the server for the stall timeout while the store awaited an answer."""


class PoolUnreachable(psycopg_pool.PoolTimeout):
    """The pool had room for another connection but could not open one in time."""


def guard_stall(gen: Generator[Any, Any, RV], seconds: float) -> Generator[Any, Any, RV]:
    """Wrap a psycopg I/O generator: raise ConnectionStalled after ``seconds`` of silence.

    psycopg drives a generator that yields what it waits for (readable,
    writable) and is sent what became ready; a wait that times out (every
    0.1 s) sends "nothing". The clock restarts whenever the socket is ready,
    so a long answer that keeps arriving never trips it; only silence does.
    That also catches a peer whose kernel still acknowledges every byte (a
    hung server or proxy), which TCP keepalives cannot see.
    """
    deadline = monotonic() + seconds
    try:
        waiting = next(gen)
        while True:
            ready = yield waiting
            if ready:
                deadline = monotonic() + seconds
            elif monotonic() >= deadline:
                gen.close()
                raise ConnectionStalled(
                    f"PostgreSQL sent nothing for {seconds:g} s while the store waited for "
                    "an answer: the connection is stalled (network partition, frozen or "
                    "overloaded server) and was closed"
                )
            waiting = gen.send(ready)
    except StopIteration as stop:
        result: RV = stop.value
        return result


# -- positions and rows ----------------------------------------------------------------


def join_position(tx: int, seq: int) -> int:
    """The public position of the row (tx, seq)."""
    return (tx << _SEQ_BITS) | seq


def split_position(position: int) -> tuple[int, int]:
    """The (tx, seq) pair of a public position (0 gives (0, 0): before everything)."""
    return position >> _SEQ_BITS, position & _SEQ_MASK


def to_rows(records: Sequence[Sequence[Any]]) -> list[Row]:
    """Map selected rows (tx, seq, stream, version, id bytes, ...) to the shared Row layout.

    One comprehension with the position computed inline: this runs for every
    event read, so it avoids a function call per row.
    """
    return [
        (
            (tx << _SEQ_BITS) | seq,
            stream,
            version,
            id_bytes,
            type_name,
            schema_version,
            data,
            meta,
            recorded,
        )
        for (
            tx,
            seq,
            stream,
            version,
            id_bytes,
            type_name,
            schema_version,
            data,
            meta,
            recorded,
        ) in records
    ]


def append_params(
    stream: str, expected: Expected, batch: Sequence[EncodedEvent]
) -> tuple[str, dict[str, Any]]:
    """The append statement's name and parameters: the expectation as a version range.

    ``append_one.sql`` takes a single event as scalars, ``append.sql`` a batch
    as arrays (building arrays costs the client more than the whole rest).

    ``low``..``high`` are the versions at which the stream satisfies
    ``expected`` (0 = no stream), so that the statement and
    :func:`~eventfold.store._rules.expectation_met` agree.
    """
    if expected is ANY:
        low, high = 0, _BIGINT_MAX
    elif expected is NO_STREAM:
        low, high = 0, 0
    elif expected is STREAM_EXISTS:
        low, high = 1, _BIGINT_MAX
    elif isinstance(expected, int) and expected <= _BIGINT_MAX:
        low = high = expected
    else:
        low, high = 1, 0  # beyond any version a stream can reach: never met
    if len(batch) == 1:
        (event,) = batch
        return "append_one", {
            "stream": stream,
            "low": low,
            "high": high,
            "id": UUID(bytes=event.id),
            "type": event.type,
            "schema_version": event.schema_version,
            "data": event.data,
            "metadata": event.metadata,
        }
    return "append", {
        "stream": stream,
        "low": low,
        "high": high,
        "ids": [UUID(bytes=e.id) for e in batch],
        "types": [e.type for e in batch],
        "schema_versions": [e.schema_version for e in batch],
        "datas": [e.data for e in batch],
        "metadatas": [e.metadata for e in batch],
    }


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
