"""The PostgreSQL event store, on psycopg 3 and a psycopg-pool connection pool.

Global order without a global lock. Appends run concurrently (only two
appends to the same stream contend, on its unique (stream, version) index).
Each row records its transaction id (``tx``, from ``pg_current_xact_id()``)
and a sequence number (``seq``); rows are read in (tx, seq) order and the
public position is ``(tx << 64) | seq``. A reader of ``read_all`` exposes
only rows below the log horizon (``sql/log_horizon.sql``): the oldest
transaction still running that may append to this store (it holds the
events table's lock, taken before it had an id). Every transaction that
could still add a row below it has ended, and every row still to commit
gets a larger tx, so readers never skip an event. Transactions that never
append, in any database, never hold readers back. The other choice,
a table lock or single counter row that makes commit order the position
order, serialises every writer.
"""

from __future__ import annotations

import asyncio  # unasync: remove
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager  # unasync: from contextlib import contextmanager
from typing import Any, TypeAlias, TypeVar
from uuid import UUID

from eventfold._checks import MAX_POSITION, check_bool, check_non_negative, check_seconds
from eventfold._clock import us_to_datetime
from eventfold.errors import (
    ConfigurationError,
    InvalidRequest,
    StoreError,
    StoreTimeout,
    StreamDeleted,
    TransactionConflict,
    WrongExpectedVersion,
)
from eventfold.serialization import Serializer
from eventfold.store._base_async import AsyncStoreBase, Wait
from eventfold.store._checkpoints_async import AsyncCheckpoints, AsyncTransaction
from eventfold.store._hooks import AsyncHookTransaction
from eventfold.store._rows import POSITION, EncodedEvent, Row, row_matches, snapshot_from_row
from eventfold.store._rules import (
    deletion_version,
    encode_deletion,
    expectation_met,
    idempotent_result,
    is_hard_deletion,
    nothing_appended,
    restore_needed,
    retried_many,
    stream_info_from,
    truncation_point,
)
from eventfold.store._types import ANY, AppendResult, Expected, Holdup, Snapshot, StreamInfo
from eventfold.store.postgres._checkpoints_async import AsyncPostgresCheckpoints
from eventfold.store.postgres._connections import (
    ConnectionStalled,
    PoolUnreachable,
    connection_settings,
    guard_stall,
)
from eventfold.store.postgres._driver import (
    AsyncConnection,
    AsyncConnectionPool,
    PoolTimeout,
    SerializationFailure,
    UniqueViolation,
    psycopg,
)
from eventfold.store.postgres._errors import schema_version_error, translate_errors
from eventfold.store.postgres._statements import (
    BIGINT_MAX,
    CHUNKED_ROWS,
    LATEST_SCHEMA_VERSION,
    PostgresStatements,
    append_params,
    join_position,
    split_position,
    to_rows,
)

__all__ = ["AsyncPostgresEventStore", "migrate"]

logger = logging.getLogger("eventfold.store.postgres")

AsyncPool: TypeAlias = AsyncConnectionPool[AsyncConnection[Any]]
RV = TypeVar("RV")

# An append with expectation ANY or STREAM_EXISTS that loses the race for a
# version to another writer tries again; each lost race means another append
# to the stream succeeded, so this bound is only a guard against a livelock.
_APPEND_ATTEMPTS = 64
_XID8_MAX = 2**64 - 1
# A streamed statement ends after this many pages or seconds, whichever comes
# first: it holds a snapshot, and a slow handler keeps it open.
_STREAM_PAGES = 200
_STREAM_SECONDS = 1.0
# Readers at the end of the log check at most this often whether the log
# horizon holds them back (one cheap query; the lock table only when behind).
_HORIZON_CHECK = 1.0


def _read_all_params(after: int, limit: int) -> dict[str, Any] | None:
    """read_all.sql's parameters for the cursor ``after`` (None: past any transaction id)."""
    tx, seq = split_position(after)
    if tx > _XID8_MAX:
        return None  # no transaction PostgreSQL can issue comes after it
    return {"tx": str(tx), "seq": min(seq, BIGINT_MAX), "limit": limit}


def _matching(rows: Sequence[Row], wanted: frozenset[str] | None, prefix: str | None) -> list[Row]:
    """The rows of types in ``wanted`` (None: any) of streams starting with ``prefix``."""
    return [row for row in rows if row_matches(row, wanted, prefix)]


_UNCLAIMED = (
    "the transaction wrote to the database before the store joined it, so readers "
    "of the log may already have passed its position: open store.transaction() "
    "(with your connection) before the transaction's first write, or append outside it"
)


def _appended(
    stream: str, batch: Sequence[EncodedEvent], expected: Expected, row: Any
) -> AppendResult | tuple[Any, ...]:
    """The result of an append statement's row, else (version, deleted) as it probed them."""
    if row is None:
        raise StoreError("PostgreSQL returned no row for the append")
    actual, deleted, inserted, seqs, tx, _, refusal, _ = row
    if refusal == "newer":
        raise TransactionConflict(stream)
    if refusal == "unclaimed":
        raise InvalidRequest(f"cannot append to {stream!r} here: {_UNCLAIMED}")
    if deleted or not expectation_met(expected, actual):
        return actual, deleted
    if inserted != len(batch):  # cannot happen: the statement has no ON CONFLICT
        raise StoreError(f"PostgreSQL stored {inserted} of {len(batch)} events")
    if not batch:
        return nothing_appended(stream, actual)
    # append_one returns the row's seq, append the array of them (version order).
    positions = (
        (join_position(tx, seqs),)
        if len(batch) == 1
        else tuple(join_position(tx, seq) for seq in seqs)
    )
    return AppendResult(stream, actual + 1, actual + len(batch), positions[-1], positions)


async def migrate(conninfo_or_pool: str | AsyncPool, *, schema: str = "eventfold") -> int:
    """Create or upgrade the eventfold tables in ``schema``; return the schema version.

    Idempotent and safe to run from several processes at once (they take
    turns on an advisory lock held by the migration transaction only). Run
    it at deployment, before the first store uses the database.
    """
    statements = PostgresStatements(schema)
    with translate_errors(schema):
        if isinstance(conninfo_or_pool, str):
            async with await AsyncConnection.connect(conninfo_or_pool, autocommit=True) as conn:
                return await _migrate(conn, statements)
        async with conninfo_or_pool.connection() as conn:
            return await _migrate(conn, statements)


async def _migrate(conn: AsyncConnection[Any], statements: PostgresStatements) -> int:
    async with conn.transaction():
        await conn.execute(statements["migrate_lock"])
        await conn.execute(statements["bootstrap"])
        current: int = await _scalar(conn, statements["schema_version"])
        error = schema_version_error(statements.schema, current)
        if current > LATEST_SCHEMA_VERSION and error is not None:
            raise error
        for version, script in statements.migrations(current):
            await conn.execute(script)
            await conn.execute(statements["record_migration"], {"version": version})
    return max(current, LATEST_SCHEMA_VERSION)


async def _scalar(
    conn: AsyncConnection[Any], query: bytes, params: dict[str, Any] | None = None
) -> Any:
    row = await _one(conn, query, params)
    value: Any = row[0]
    return value


async def _one(
    conn: AsyncConnection[Any], query: bytes, params: dict[str, Any] | None = None
) -> tuple[Any, ...]:
    """The single row of a query that always returns one (an aggregate)."""
    cursor = await conn.execute(query, params)
    row = await cursor.fetchone()
    if row is None:
        raise StoreError("PostgreSQL returned no row for a single-row query")
    return tuple(row)


class AsyncStoreConnection(AsyncConnection[Any]):
    """A connection that gives up on a server that stops answering.

    With ``stall_timeout`` set, a wait for the server that receives nothing
    for that many seconds closes the connection and raises ConnectionStalled
    (StoreUnavailable): the pool then replaces it. Waits that carry their own
    timeout (LISTEN's wait for notifications) are left alone.
    """

    stall_timeout: float | None = None

    async def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        if self.stall_timeout is None or kwargs.get("timeout") is not None:
            return await super().wait(gen, *args, **kwargs)
        try:
            return await super().wait(guard_stall(gen, self.stall_timeout), *args, **kwargs)
        except ConnectionStalled:
            # The state of the session is unknown: never use this connection again.
            self.pgconn.finish()
            raise


class AsyncStorePool(AsyncConnectionPool[AsyncConnection[Any]]):
    """The store's own pool: tells an exhausted pool from a server it cannot reach.

    It counts the connections handed out. A wait for a connection that times
    out while fewer than ``max_size`` are out means the pool could have
    opened another one and did not manage to: PoolUnreachable (the server is
    unreachable or not accepting connections), not PoolTimeout (exhausted).
    """

    def __init__(self, *args: Any, stall_timeout: float | None = None, **kwargs: Any) -> None:
        self._stall_timeout = stall_timeout
        self._out = 0
        self._out_lock = threading.Lock()
        super().__init__(*args, configure=self._configure_connection, **kwargs)

    async def _configure_connection(self, conn: AsyncConnection[Any]) -> None:
        if isinstance(conn, AsyncStoreConnection):
            conn.stall_timeout = self._stall_timeout

    async def getconn(self, timeout: float | None = None) -> AsyncConnection[Any]:
        try:
            conn = await super().getconn(timeout)
        except PoolTimeout as exc:
            if self._out < self.max_size:
                waited = self.timeout if timeout is None else timeout
                raise PoolUnreachable(
                    f"no PostgreSQL connection could be opened within {waited:g} s "
                    f"({self._out} of the pool's {self.max_size} in use)"
                ) from exc
            raise
        with self._out_lock:
            self._out += 1
        return conn

    async def putconn(self, conn: AsyncConnection[Any]) -> None:
        with self._out_lock:
            self._out -= 1
        await super().putconn(conn)


class AsyncPostgresEventStore(AsyncStoreBase):
    """An event store in a PostgreSQL database (schema created by :func:`migrate`).

    :param conninfo: a libpq connection string (``postgresql://user@host/db``);
        the store then owns a pool of ``min_size``..``max_size`` connections.
    :param pool: instead of ``conninfo``, a pool you own (and close).
    :param schema: the PostgreSQL schema holding the store's tables.
    :param connect_timeout: seconds to wait for a connection (new or from
        the pool) before StoreUnavailable / StoreTimeout.
    :param statement_timeout: seconds the server may spend on one statement
        before it cancels it (StoreTimeout); None keeps the server's setting.
    :param stall_timeout: seconds without a byte from the server, while the
        store waits for an answer, after which the connection is taken for
        stalled, closed and reported as StoreUnavailable. Defaults to
        ``statement_timeout`` + 5 s, or no limit without a statement_timeout
        (a dead peer is still noticed by the TCP keepalive and
        ``tcp_user_timeout`` defaults, see docs/postgres.md).
    :param notify: announce each append with NOTIFY, which wakes
        :meth:`subscribe` at once. PostgreSQL serialises the commits of
        notifying transactions within a database, so with many concurrent
        writers ``notify=False`` gives more appends per second; subscribers
        then see new events within their ``poll_interval``.
    :param holdup_warning: seconds readers of the log may be held back by
        one transaction that may still append (see :meth:`holdups`) before a
        warning on logger ``eventfold.store`` names it, then again every
        ``holdup_warning`` seconds while it lasts.
    """

    _db_system = "postgresql"

    #: Positions are (tx << 64) | seq with a 64-bit transaction id.
    _max_position = MAX_POSITION

    def __init__(
        self,
        conninfo: str | None = None,
        *,
        pool: AsyncPool | None = None,
        schema: str = "eventfold",
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        statement_timeout: float | None = None,
        stall_timeout: float | None = None,
        notify: bool = True,
        holdup_warning: float = 10.0,
        serializer: Serializer | None = None,
        page_size: int = 500,
    ) -> None:
        super().__init__(serializer=serializer, page_size=page_size)
        self._holdup_warning = check_seconds(
            "holdup_warning", holdup_warning, error=ConfigurationError
        )
        # The log horizon as readers at the end of the log last found it
        # (checked at most every _HORIZON_CHECK seconds; see _watch_horizon).
        self._horizon_checked = 0.0
        self._held: tuple[int, float] | None = None  # (horizon, since) while held back
        self._holdup_warned = 0.0
        self._server: tuple[str, Any] | None = None  # (database, server start)
        if (conninfo is None) == (pool is None):
            raise ConfigurationError("pass either a conninfo string or pool=, not both")
        check_non_negative("min_size", min_size, minimum=1, error=ConfigurationError)
        check_non_negative("max_size", max_size, minimum=1, error=ConfigurationError)
        check_bool("notify", notify, error=ConfigurationError)
        if not 1 <= min_size <= max_size:
            raise ConfigurationError(
                f"need 1 <= min_size <= max_size, not min_size={min_size} max_size={max_size}"
            )
        if pool is not None and (statement_timeout, stall_timeout) != (None, None):
            raise ConfigurationError(
                "statement_timeout= and stall_timeout= configure the store's own pool: with "
                "pool=, set them on your pool's connections (kwargs={'options': "
                "'-c statement_timeout=...'})"
            )
        self._sql = PostgresStatements(schema, notify=notify)
        self._notify = notify
        self._errors = translate_errors(schema)
        self._owns_pool = pool is None
        # Dedicated connections (the first schema check, LISTEN) connect with this.
        self._conninfo = conninfo
        if pool is not None and isinstance(pool.conninfo, str):
            self._conninfo = pool.conninfo
        self._connect_kwargs, self._stall_timeout = connection_settings(
            self._conninfo,
            connect_timeout=connect_timeout,
            statement_timeout=statement_timeout,
            stall_timeout=stall_timeout,
        )
        if pool is None and conninfo is not None:
            pool = AsyncStorePool(
                conninfo,
                connection_class=AsyncStoreConnection,
                min_size=min_size,
                max_size=max_size,
                timeout=connect_timeout,
                kwargs=self._connect_kwargs,
                open=False,
                name=f"eventfold-{schema}",
                stall_timeout=self._stall_timeout,
            )
        if pool is None:
            raise ConfigurationError("pass either a conninfo string or pool=")
        self._pool: AsyncPool = pool
        self._ready = False
        self._ready_lock = asyncio.Lock()  # unasync: self._ready_lock = threading.Lock()

    @property
    def schema(self) -> str:
        """The PostgreSQL schema holding the store's tables."""
        return self._sql.schema

    @property
    def pool(self) -> AsyncPool:
        """The connection pool the store uses."""
        return self._pool

    async def migrate(self) -> int:
        """Create or upgrade this store's schema; see :func:`migrate`."""
        self._check_open()
        if self._owns_pool and self._conninfo is not None:
            return await migrate(self._conninfo, schema=self.schema)
        return await migrate(self._pool, schema=self.schema)

    # -- connections ------------------------------------------------------------------

    @asynccontextmanager  # unasync: @contextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        if not self._ready:
            await self._prepare()
        async with self._pool.connection() as conn:
            yield conn

    async def _connect(self) -> AsyncStoreConnection:
        """A dedicated connection (not pooled), set up like the pool's (close it yourself).

        TCP keepalives, ``tcp_user_timeout``, ``connect_timeout`` and
        ``statement_timeout`` as configured, and the stall timeout.
        """
        if self._conninfo is None:
            raise ConfigurationError(
                "a dedicated connection needs a pool whose conninfo is a string"
            )
        conn = await AsyncStoreConnection.connect(self._conninfo, **self._connect_kwargs)
        conn.stall_timeout = self._stall_timeout
        return conn

    async def _prepare(self) -> None:
        """Check the schema once, then open the pool (if the store owns it)."""
        async with self._ready_lock:
            if self._ready:
                return
            if self._owns_pool and self._conninfo is not None:
                # A direct connection first: when the server cannot be reached, a pool
                # only reports a timeout, whereas this reports why (refused, bad
                # password, unknown database) and does so at once.
                async with await self._connect() as conn:
                    await self._check_schema(conn)
                await self._pool.open()
            else:
                async with self._pool.connection() as conn:
                    await self._check_schema(conn)
            self._ready = True

    async def _check_schema(self, conn: AsyncConnection[Any]) -> None:
        found = await _scalar(conn, self._sql["schema_version"])
        error = schema_version_error(self.schema, found)
        if error is not None:
            raise error

    # -- backend I/O ------------------------------------------------------------------

    def _make_checkpoints(self) -> AsyncCheckpoints:
        return AsyncPostgresCheckpoints(self)

    @asynccontextmanager
    async def _transaction(
        self, *, pipeline: bool = False, claim: bool = True
    ) -> AsyncIterator[AsyncTransaction]:
        # ``claim``: the transaction may append after other writes, so it takes
        # the events table's lock before it has an id (claim.sql); readers wait
        # for it from its first write. A checkpoint's transaction (a SQL read
        # model's batch) does not: it holds nobody back.
        # ``pipeline``: from the block's second statement on, statements are
        # queued and sent together, the client waiting only where the block
        # reads a result (a checkpoint's advance does) and before COMMIT: a SQL
        # read model's batch of many events costs a few round trips, not one per
        # statement. Not from the first: psycopg's pipeline mode costs more
        # than the round trip it saves for a batch of one or two statements (a
        # live runner's usual batch; measured in /benchmarks). An error in a
        # queued statement reaches the block at its next read or at its end,
        # inside the transaction, which rolls back.
        errors = translate_errors(self.schema)
        with errors:
            async with self._connection() as conn, conn.transaction():
                if claim:
                    await conn.execute(self._sql["claim"])
                tx = AsyncPostgresTransaction(self, conn, pipeline_from=2 if pipeline else None)
                try:
                    yield tx
                except BaseException as exc:
                    await tx._end_pipeline(exc)
                    raise
                await tx._end_pipeline(None)

    @asynccontextmanager
    async def _transaction_on(self, connection: Any) -> AsyncIterator[AsyncTransaction]:
        # The application's connection, in its own transaction or in one begun
        # here. Checked first: the same database and server as the store's pool
        # (a connection elsewhere would append to another log) and the schema.
        if not isinstance(connection, AsyncConnection):
            kind = AsyncConnection.__name__
            raise InvalidRequest(
                f"transaction() takes a psycopg {kind} to the store's database, "
                f"not {type(connection).__name__}"
            )
        if connection.closed:
            raise InvalidRequest("the connection given to transaction() is closed")
        identity = await self._identity()
        # Errors of the store's own statements are translated; the block's own
        # (the application's statements on its connection) pass unchanged.
        errors = translate_errors(self.schema)
        block = connection.transaction()
        with errors:
            await block.__aenter__()
        try:
            with errors:
                cursor = await connection.execute(self._sql["join_transaction"])
                row = await cursor.fetchone()
            if row is None or (row[0], row[1]) != identity or not row[2]:
                raise InvalidRequest(
                    f"the connection given to transaction() is to database "
                    f"{row[0] if row else None!r} of another server or without schema "
                    f"{self.schema!r}, not to the store's database {identity[0]!r}"
                )
            if row[3] and not row[4]:
                raise InvalidRequest(f"cannot join the connection's transaction: {_UNCLAIMED}")
            with errors:
                await connection.execute(self._sql["claim"])
            yield AsyncPostgresTransaction(self, connection)
        except BaseException as exc:
            await block.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        with errors:
            await block.__aexit__(None, None, None)

    async def _identity(self) -> tuple[str, Any]:
        """The store's database and its server's start time (asked once)."""
        if self._server is None:
            with self._errors:
                async with self._connection() as conn:
                    cursor = await conn.execute(self._sql["join_transaction"])
                    row = await cursor.fetchone()
            if row is None:
                raise StoreError("PostgreSQL returned no row for the store's identity")
            self._server = (row[0], row[1])
        return self._server

    def _hook_transaction(self, conn: Any) -> AsyncHookTransaction:
        return AsyncHookTransaction(conn, "%s")

    async def _append(
        self, stream: str, batch: list[EncodedEvent], expected: Expected
    ) -> AppendResult:
        with translate_errors(self.schema, stream, expected) as errors:
            async with self._connection() as conn:
                return await self._append_on(conn, errors, stream, batch, expected)

    async def _append_on(
        self,
        conn: AsyncConnection[Any],
        errors: translate_errors,
        stream: str,
        batch: list[EncodedEvent],
        expected: Expected,
        *,
        in_transaction: bool = False,
    ) -> AppendResult:
        """Append on ``conn``: alone (autocommit), or in its open transaction."""
        statement, params = append_params(stream, expected, batch)
        if in_transaction:
            statement = f"{statement}_in_transaction"
        query = self._sql[statement]
        actual = 0
        for _ in range(_APPEND_ATTEMPTS):
            # The happy path is this one statement: one round trip, no BEGIN/COMMIT.
            state = await self._try_append(
                conn, errors, stream, batch, expected, query, params, in_transaction
            )
            if isinstance(state, AppendResult):
                return state
            # Nothing was written: the expectation failed, the stream is
            # deleted, or a unique violation undid the statement. The batch may
            # be a retry of one already stored, else a conflict or a lost race.
            retried = await self._find_batch(conn, stream, batch)
            if retried is not None:
                return retried
            if state is None:  # a unique violation: read the state it ran into
                if in_transaction and (await _one(conn, self._sql["snapshot_fixed"]))[0]:
                    # A newer transaction took the version, invisible to this
                    # transaction's snapshot: only a new transaction can see it.
                    raise TransactionConflict(stream)
                state = await _one(conn, self._sql["stream_state"], {"stream": stream})
            actual, deleted = state
            if deleted:
                raise StreamDeleted(stream, await self._hard_deleted(conn, stream))
            if not expectation_met(expected, actual):
                raise WrongExpectedVersion(stream, expected, actual)
            # Still met: another writer took our versions first (ANY,
            # STREAM_EXISTS); try again on top of its events.
        raise WrongExpectedVersion(stream, expected, actual)

    async def _try_append(
        self,
        conn: AsyncConnection[Any],
        errors: translate_errors,
        stream: str,
        batch: list[EncodedEvent],
        expected: Expected,
        query: bytes,
        params: dict[str, Any],
        in_transaction: bool = False,
    ) -> AppendResult | tuple[Any, ...] | None:
        """One attempt: the result, else (version, deleted) as probed, else None.

        None means a unique violation (a lost race for a version, or a stored
        event id) undid the statement. Nothing is stored unless an
        AppendResult is returned. ``errors.sent`` is True from the moment the
        statement leaves until its outcome is known: a connection lost in
        between leaves it unknown whether the batch was committed.
        """
        errors.sent = not in_transaction  # a transaction's outcome is its COMMIT's
        try:
            if self._inline or in_transaction:
                # In the append's own transaction (or a savepoint of the caller's,
                # so that a unique violation undoes this statement only).
                # Inline projections write in the append's transaction.
                async with conn.transaction():
                    cursor = await conn.execute(query, params)
                    row = await cursor.fetchone()
                    if row is not None and row[2]:
                        await self._append_inline(conn, stream, row[0], len(batch))
            elif conn.autocommit:
                # A single statement is atomic on its own: no transaction block.
                cursor = await conn.execute(query, params)
                row = await cursor.fetchone()
            else:  # a pool you own, without autocommit
                async with conn.transaction():
                    cursor = await conn.execute(query, params)
                    row = await cursor.fetchone()
        except UniqueViolation:
            errors.sent = False  # the server undid the statement
            return None
        errors.sent = False
        return _appended(stream, batch, expected, row)

    async def _append_many(
        self, appends: list[tuple[str, list[EncodedEvent], Expected]]
    ) -> list[AppendResult]:
        with translate_errors(self.schema) as errors:
            async with self._connection() as conn:
                return await self._append_many_on(conn, errors, appends)

    async def _append_many_on(
        self,
        conn: AsyncConnection[Any],
        errors: translate_errors,
        appends: list[tuple[str, list[EncodedEvent], Expected]],
    ) -> list[AppendResult]:
        """Append every batch in one transaction on ``conn``, else none.

        The statements run in stream name order: two calls on overlapping
        streams then wait for each other's versions in one order, where
        other orders could deadlock.
        """
        order = sorted(range(len(appends)), key=lambda i: appends[i][0])
        statements = []
        for i in order:
            stream, batch, expected = appends[i]
            name, params = append_params(stream, expected, batch)
            statements.append((i, self._sql[name], params))
        lost = 0
        for _ in range(_APPEND_ATTEMPTS):
            outcome = await self._try_append_many(conn, errors, appends, statements)
            if isinstance(outcome, list):
                return outcome
            # Nothing was written: a retry of a stored call, a failed
            # expectation, a deleted stream, or a lost race; the same order of
            # decisions as every backend's, in the order the caller gave.
            lost = outcome
            retried = [await self._find_batch(conn, s, b) for s, b, _ in appends]
            if retried_many(appends, retried):
                return [
                    result if result is not None else await self._empty_result(conn, stream)
                    for (stream, _, _), result in zip(appends, retried, strict=True)
                ]
            for stream, _, expected in appends:
                actual, deleted = await _one(conn, self._sql["stream_state"], {"stream": stream})
                if deleted:
                    raise StreamDeleted(stream, await self._hard_deleted(conn, stream))
                if not expectation_met(expected, actual):
                    raise WrongExpectedVersion(stream, expected, actual)
            if not conn.autocommit:
                # End the implicit transaction of the reads above: the next attempt
                # must begin a transaction of its own (REPEATABLE READ from the start).
                await conn.rollback()
            # Every expectation still holds: another writer took a version of
            # a stream (ANY, STREAM_EXISTS) first; try again on top of its events.
        stream, _, expected = appends[lost]
        actual, _ = await _one(conn, self._sql["stream_state"], {"stream": stream})
        raise WrongExpectedVersion(stream, expected, actual)

    async def _try_append_many(
        self,
        conn: AsyncConnection[Any],
        errors: translate_errors,
        appends: list[tuple[str, list[EncodedEvent], Expected]],
        statements: list[tuple[int, bytes, dict[str, Any]]],
    ) -> list[AppendResult] | int:
        """One attempt: every result, else the index of the append that stopped it.

        Nothing is stored unless the results are returned: the transaction is
        rolled back at the first statement that writes nothing (a failed
        expectation, a deleted stream) or raises a unique violation (a lost
        race for a version, a stored event id). It runs under REPEATABLE READ
        (see repeatable_read.sql), where a write that meets a concurrent one
        fails with a serialization failure: rolled back too, and decided alike.
        """
        results: list[AppendResult | None] = [None] * len(appends)
        current = 0
        try:
            async with conn.transaction():
                await conn.execute(self._sql["repeatable_read"])
                for current, query, params in statements:
                    stream, batch, expected = appends[current]
                    try:
                        cursor = await conn.execute(query, params)
                    except UniqueViolation:
                        raise psycopg.Rollback from None  # the block ends, rolled back
                    outcome = _appended(stream, batch, expected, await cursor.fetchone())
                    if not isinstance(outcome, AppendResult):
                        raise psycopg.Rollback
                    if batch and self._inline:
                        await self._append_inline(
                            conn, stream, outcome.from_version - 1, len(batch)
                        )
                    results[current] = outcome
                # The COMMIT is on its way: a connection lost now leaves the
                # outcome unknown (the error says so).
                errors.sent = True
        except SerializationFailure:
            errors.sent = False
            return current
        errors.sent = False
        done = [result for result in results if result is not None]
        return done if len(done) == len(appends) else current

    async def _empty_result(self, conn: AsyncConnection[Any], stream: str) -> AppendResult:
        """An empty batch's result: the stream's version, nothing written."""
        actual, _ = await _one(conn, self._sql["stream_state"], {"stream": stream})
        return nothing_appended(stream, actual)

    async def _append_inline(
        self, conn: AsyncConnection[Any], stream: str, before: int, count: int
    ) -> None:
        # This transaction sees its own rows: read them back with their positions.
        params = {"stream": stream, "version": before + 1, "limit": count}
        async with conn.cursor(binary=True) as cursor:
            await cursor.execute(self._sql["read_forward_own"], params)
            rows = to_rows(await cursor.fetchall())
        await self._await_inline(conn, rows)

    async def _find_batch(
        self, conn: AsyncConnection[Any], stream: str, batch: list[EncodedEvent]
    ) -> AppendResult | None:
        if not batch:
            return None
        cursor = await conn.execute(
            self._sql["find_event_ids"], {"ids": [UUID(bytes=e.id) for e in batch]}
        )
        found = {
            event_id.bytes: (found_stream, version, join_position(tx, seq))
            for event_id, found_stream, version, tx, seq in await cursor.fetchall()
        }
        return idempotent_result(stream, batch, found)

    async def _rows(self, query: bytes, params: dict[str, Any]) -> list[Row]:
        with self._errors:
            async with self._connection() as conn, conn.cursor(binary=True) as cursor:
                # Binary results: bytea arrives as raw bytes instead of hex text.
                await cursor.execute(query, params)
                return to_rows(await cursor.fetchall())

    async def _read_page(
        self, stream: str, cursor: int, backwards: bool, count: int
    ) -> Sequence[Row]:
        query = self._sql["read_backward" if backwards else "read_forward"]
        return await self._rows(query, {"stream": stream, "version": cursor, "limit": count})

    async def _read_all_page(
        self, after: int, types: list[str] | None, prefix: str | None, count: int
    ) -> Sequence[Row]:
        rows, _ = await self._read_all_page_reach(after, types, prefix, count)
        return rows

    async def _read_all_page_reach(
        self, after: int, types: list[str] | None, prefix: str | None, count: int
    ) -> tuple[list[Row], int]:
        """A page of the log after ``after``, and how far the read got: every event
        up to that position was read (those the filters keep are in the page)."""
        params = _read_all_params(after, count)
        if params is None:
            return [], after
        if types is None and prefix is None:
            rows = await self._rows(self._sql["read_all"], params)
            if len(rows) < count:
                await self._watch_horizon()
            return rows, rows[-1][POSITION] if rows else after
        # Filters are applied here, on pages read in (tx, seq) order. With the
        # filter in SQL the planner, misjudging how many rows match (always so
        # before the table is first analysed), sorts every row after the cursor
        # for each page instead of walking the index: quadratic catch-ups.
        wanted = frozenset(types) if types is not None else None
        matched: list[Row] = []
        reach = after
        while len(matched) < count:
            page = await self._rows(self._sql["read_all"], params)
            matched += _matching(page, wanted, prefix)
            if page:
                reach = page[-1][POSITION]
            if len(page) < count:
                await self._watch_horizon()
                break
            tx, seq = split_position(reach)
            params.update(tx=str(tx), seq=seq)
        if len(matched) > count:
            del matched[count:]  # read again by the next page: the read got this far
            reach = matched[-1][POSITION]
        return matched, reach

    async def _read_all_pages(
        self, after: int, types: list[str] | None, prefix: str | None, count: int
    ) -> AsyncGenerator[Sequence[Row], None]:
        # A backlog streams: one statement returns up to _STREAM_PAGES pages and
        # their rows arrive while the caller handles earlier pages (no round
        # trip, planning or index descent per page: twice the catch-up speed).
        # The first page is an ordinary read, so a follower that is nearly
        # caught up holds no connection while it handles events. A pool of one
        # connection never streams (the caller's handlers may need it), nor
        # does a libpq older than 17 (no chunked rows).
        first = await self._read_all_page(after, types, prefix, count)
        if first:
            yield first
        if len(first) < count:
            return
        after = first[-1][POSITION]
        if self._pool.max_size < 2 or not CHUNKED_ROWS:
            async for page in super()._read_all_pages(after, types, prefix, count):
                yield page
            return
        wanted = frozenset(types) if types is not None else None
        filtered = types is not None or prefix is not None
        limit = count * _STREAM_PAGES
        while True:
            params = _read_all_params(after, limit)
            if params is None:
                return
            start, read = after, 0
            deadline = time.monotonic() + _STREAM_SECONDS
            chunks = self._record_chunks(params, count)
            try:
                async for records in chunks:
                    read += len(records)
                    rows = to_rows(records)
                    after = rows[-1][POSITION]
                    page = _matching(rows, wanted, prefix) if filtered else rows
                    if page:
                        yield page
                    if time.monotonic() > deadline:
                        break  # statements stay short: the next one starts at `after`
                else:
                    if read < limit:
                        await self._watch_horizon()
                        return  # the end of the log as this statement saw it
            except StoreTimeout:
                # statement_timeout ended the statement while the caller handled a
                # page (the server waits for the client to read on). The pages
                # yielded stand; the next statement starts after them.
                if after == start:
                    raise
                logger.info("statement_timeout ended a streamed read; reading on from there")
            finally:
                await chunks.aclose()  # gives the connection back now, mid-stream too

    async def _record_chunks(
        self, params: dict[str, Any], count: int
    ) -> AsyncGenerator[list[Any], None]:
        """One read_all statement's rows, streamed, in lists of ``count`` (the last shorter)."""
        with self._errors:
            async with self._connection() as conn, conn.cursor(binary=True) as cursor:
                records: list[Any] = []
                async for record in cursor.stream(self._sql["read_all"], params, size=count):
                    records.append(record)
                    if len(records) == count:
                        yield records
                        records = []
                if records:
                    yield records

    async def holdups(self) -> list[Holdup]:
        """The transactions that hold readers of the log back now, oldest first.

        Each is a write transaction of the store's database (it may still
        append events) older than an event already committed: until it ends,
        ``read_all``, subscriptions and projection runners see nothing
        committed after it (``backlog`` and a projection's ``lag_events`` do
        count those events). Transactions of other databases and read-only
        ones are never among them.
        """
        self._check_open()
        with self._errors:
            async with self._connection() as conn:
                cursor = await conn.execute(self._sql["holdups"])
                rows = await cursor.fetchall()
        return [
            Holdup(
                xid,
                pid,
                database,
                application,
                state,
                None if started is None else us_to_datetime(started),
                None if queried is None else us_to_datetime(queried),
                gid,
            )
            for xid, pid, database, application, state, started, queried, gid in rows
        ]

    async def _watch_horizon(self) -> None:
        """A reader reached the end of the log: warn if one horizon holds readers back long.

        At most every _HORIZON_CHECK seconds per store. The horizon is kept
        with the time it was first seen holding events back; a warning names
        the holdups once it has lasted ``holdup_warning`` seconds, then again
        every ``holdup_warning`` seconds.
        """
        now = time.monotonic()
        if now - self._horizon_checked < _HORIZON_CHECK:
            return
        self._horizon_checked = now
        with self._errors:
            async with self._connection() as conn:
                cursor = await conn.execute(self._sql["held_back"])
                row = await cursor.fetchone()
        if row is None or not row[1]:
            self._held = None
            return
        if self._held is None or self._held[0] != row[0]:
            self._held = (row[0], now)
            return
        held_for = now - self._held[1]
        if held_for < self._holdup_warning or now - self._holdup_warned < self._holdup_warning:
            return
        self._holdup_warned = now
        holdups = await self.holdups()
        logger.warning(
            "readers of the log of schema %r have been held back for %.0f s by %s; "
            "events committed since wait until it ends",
            self.schema,
            held_for,
            "; ".join(h.describe() for h in holdups) or "a transaction that has just ended",
        )

    async def _get_stream(self, stream: str) -> StreamInfo | None:
        with self._errors:
            async with self._connection() as conn:
                row = await _one(conn, self._sql["stream_info"], {"stream": stream})
        return stream_info_from(self.serializer, stream, *row)

    async def _set_stream_metadata(self, stream: str, metadata: bytes | None) -> None:
        with self._errors:
            async with self._connection() as conn:
                await conn.execute(
                    self._sql["set_stream_metadata"], {"stream": stream, "metadata": metadata}
                )

    async def _last_position(self) -> int:
        with self._errors:
            async with self._connection() as conn:
                cursor = await conn.execute(self._sql["last_position"])
                row = await cursor.fetchone()
        return 0 if row is None else join_position(row[0], row[1])

    async def _close(self) -> None:
        if self._owns_pool:
            await self._pool.close()

    async def _hard_deleted(self, conn: AsyncConnection[Any], stream: str) -> bool:
        row = await _one(conn, self._sql["stream_info"], {"stream": stream})
        return is_hard_deletion(row[3])

    async def _find_event(self, event_id: bytes) -> Row | None:
        rows = await self._rows(self._sql["find_event"], {"id": UUID(bytes=event_id)})
        return rows[0] if rows else None

    async def _locked_state(
        self, conn: AsyncConnection[Any], stream: str
    ) -> tuple[int, bytes | None]:
        """Lock the stream's row (lifecycle changes of one stream take turns); its state."""
        params = {"stream": stream}
        await conn.execute(self._sql["lock_stream"], params)
        version, _, _, deletion, _ = await _one(conn, self._sql["stream_info"], params)
        return version, deletion

    async def _delete_stream(self, stream: str, hard: bool, by: str, reason: str) -> None:
        params = {"stream": stream}
        with self._errors:
            async with self._connection() as conn, conn.transaction():
                version = deletion_version(stream, *await self._locked_state(conn, stream), hard)
                if version is None:
                    return
                record = encode_deletion(by, reason, hard, version)
                await conn.execute(self._sql["mark_deleted"], {**params, "deletion": record})
                if hard:
                    await conn.execute(self._sql["erase_stream"], params)

    async def _restore_stream(self, stream: str) -> None:
        with self._errors:
            async with self._connection() as conn, conn.transaction():
                if restore_needed(stream, *await self._locked_state(conn, stream)):
                    await conn.execute(self._sql["restore_stream"], {"stream": stream})

    async def _truncate_stream(self, stream: str, before: int, by: str, reason: str) -> int:
        params = {"stream": stream}
        with self._errors:
            async with self._connection() as conn, conn.transaction():
                state = await self._locked_state(conn, stream)
                keep_from = truncation_point(stream, *state, before)
                cursor = await conn.execute(
                    self._sql["erase_before"], {**params, "before": keep_from}
                )
                if cursor.rowcount:
                    record = encode_deletion(by, reason, True, keep_from)
                    await conn.execute(
                        self._sql["mark_truncated"], {**params, "truncation": record}
                    )
                return cursor.rowcount

    async def _save_snapshot(
        self, stream: str, version: int, state_type: str, schema_version: int, data: bytes
    ) -> None:
        params = {
            "stream": stream,
            "version": version,
            "state_type": state_type,
            "schema_version": schema_version,
            "data": data,
        }
        with self._errors:
            async with self._connection() as conn:
                await conn.execute(self._sql["save_snapshot"], params)

    async def _load_snapshot(self, stream: str, max_version: int) -> Snapshot | None:
        params = {"stream": stream, "max_version": min(max_version, BIGINT_MAX)}
        with self._errors:
            async with self._connection() as conn:
                cursor = await conn.execute(self._sql["load_snapshot"], params)
                row = await cursor.fetchone()
        return None if row is None else snapshot_from_row(stream, row)

    async def _list_snapshots(self, stream: str) -> list[Snapshot]:
        with self._errors:
            async with self._connection() as conn:
                cursor = await conn.execute(self._sql["list_snapshots"], {"stream": stream})
                rows = await cursor.fetchall()
        return [snapshot_from_row(stream, row) for row in rows]

    async def _delete_snapshots(
        self, stream: str | None, state_type: str | None, keep_schema_version: int | None
    ) -> int:
        params = {"stream": stream, "state_type": state_type, "keep": keep_schema_version}
        with self._errors:
            async with self._connection() as conn:
                cursor = await conn.execute(self._sql["delete_snapshots"], params)
                return cursor.rowcount

    # -- live subscription --------------------------------------------------------------

    @asynccontextmanager  # unasync: @contextmanager
    async def _follow(self) -> AsyncIterator[Wait]:
        # A dedicated connection LISTENs for appends to this schema. It listens
        # before the subscription's first read, so any commit after that read
        # is announced; notifications queued behind the one that woke a wait
        # only cause one cheap, empty read each. Without NOTIFY (notify=False)
        # the poll interval finds new events. When this connection is lost, the
        # wait raises StoreUnavailable and subscribe() resumes on a new one.
        if self._conninfo is None:
            raise ConfigurationError("subscribe() needs a pool whose conninfo is a string")
        with self._errors:
            if not self._ready:
                await self._prepare()
            listener = await self._connect()
        try:
            with self._errors:
                await listener.execute(self._sql["listen"])
            # From here on it only waits for notifications, each wait with its own
            # timeout: a quiet channel is not a stalled connection.
            listener.stall_timeout = None

            async def wait(after: int, timeout: float) -> bool:
                heard = False
                with self._errors:
                    async for _ in listener.notifies(timeout=timeout, stop_after=1):
                        heard = True
                return heard

            yield wait
        finally:
            await listener.close()


class AsyncPostgresTransaction:
    """A transaction of the PostgreSQL store (see ``AsyncStoreBase.transaction``).

    ``connection`` is the psycopg connection inside it; ``execute`` takes
    ``?`` placeholders (turned into psycopg's ``%s``: write no literal ``?``).
    """

    def __init__(
        self,
        store: AsyncPostgresEventStore,
        conn: AsyncConnection[Any],
        *,
        pipeline_from: int | None = None,
    ) -> None:
        self._store = store
        self.connection = conn
        # Enter psycopg's pipeline mode at this statement of execute (None: never).
        self._pipeline_from = pipeline_from
        self._statements = 0
        self._pipeline: Any = None  # psycopg's pipeline context, while in it

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run ``sql`` (``?`` placeholders) in the transaction."""
        if self._pipeline is None and self._pipeline_from is not None:
            self._statements += 1
            if self._statements >= self._pipeline_from:
                pipeline = self.connection.pipeline()
                await pipeline.__aenter__()
                self._pipeline = pipeline
        return await self.connection.execute(sql.replace("?", "%s"), params)

    async def _end_pipeline(self, error: BaseException | None) -> None:
        """Leave pipeline mode (sending what is queued) before the transaction ends."""
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is None:
            return
        if error is None:
            await pipeline.__aexit__(None, None, None)
        else:
            await pipeline.__aexit__(type(error), error, error.__traceback__)

    async def append(
        self, stream: str, events: Sequence[object], *, expected: Expected = ANY
    ) -> AppendResult:
        """Append in this transaction: visible, and final, once it commits."""
        store = self._store
        stream, batch, expected = store._checked_append(stream, events, expected)
        with translate_errors(store.schema, stream, expected) as errors:
            return await store._append_on(
                self.connection, errors, stream, batch, expected, in_transaction=True
            )
