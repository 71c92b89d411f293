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

import re
from collections.abc import Sequence
from typing import Any, Final
from uuid import UUID

from eventfold.errors import (
    ConfigurationError,
)
from eventfold.store._rows import EncodedEvent, Row
from eventfold.store._sql import load_statements
from eventfold.store._types import ANY, NO_STREAM, STREAM_EXISTS, Expected
from eventfold.store.postgres._driver import (
    psycopg,
    sql,
)

__all__ = [
    "BIGINT_MAX",
    "CHUNKED_ROWS",
    "LATEST_SCHEMA_VERSION",
    "PostgresStatements",
    "append_params",
    "check_schema_name",
    "join_position",
    "split_position",
    "to_rows",
]

#: The schema version this eventfold writes; ``migrate()`` brings a database here.
LATEST_SCHEMA_VERSION: Final = 4
_SEQ_BITS: Final = 64
#: Whether libpq can return a result in chunks of rows (libpq 17 and newer;
#: psycopg[binary] bundles one): streamed reads need it.
CHUNKED_ROWS: Final = psycopg.pq.version() >= 170000
_SEQ_MASK: Final = (1 << _SEQ_BITS) - 1
#: The largest PostgreSQL bigint: versions and seqs are clamped to it in parameters.
BIGINT_MAX: Final = 2**63 - 1
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")
_TEXT = load_statements("postgres")
# Appends inside a longer transaction (store.transaction(), the application's
# own, a SQL read model's batch): the tx their rows take (append.sql's
# own), as one decision, and when they refuse.
#
# Readers count a transaction of their snapshot only while it holds the
# events table's RowExclusiveLock (log_writers.sql), so a transaction must
# hold it from before it has an id. One that does: its id is unassigned
# when the append's statement (which took the lock while it was parsed or
# bound) begins, or it is marked (store.transaction() claims the lock at its
# start, claim.sql, and an append marks its transaction). Any other has an
# id that readers may have passed over: the append is refused ("unclaimed",
# InvalidRequest), nothing inserted. The mark is a transaction-local
# setting: a rolled-back savepoint undoes it with the lock it stood for.
#
# The rows take the xmax of the statement's snapshot, or the transaction's
# id if larger: under READ COMMITTED that snapshot (taken after the lock) has
# every event of the stream, so the rows come after them in the log, and the
# tx of one transaction's appends never decreases (their versions keep the
# log's order). Under REPEATABLE READ and SERIALIZABLE the snapshot is the
# transaction's and its xmax is below the id: the rows take the id. Readers
# count the transaction at its id, never more than its rows' tx. Readers reach
# the rows once the transaction has committed: the savepoint each append runs
# in gets a subtransaction id at or above that xmax, and it completes with the
# transaction, which moves every snapshot's xmax past it.
_UNMARKED = "nullif(current_setting({mark_name}, true), '') IS NULL"
_CLAIM = """(SELECT CASE WHEN b.unclaimed THEN NULL
        ELSE greatest(pg_snapshot_xmax(pg_current_snapshot()), pg_current_xact_id())
    END AS own
    FROM (SELECT pg_current_xact_id_if_assigned() IS NOT NULL AND {unmarked} AS unclaimed
          OFFSET 0) AS b)"""
# "newer": the stream's newest event has a larger tx (a newer transaction's,
# committed, which a REPEATABLE READ snapshot may show): this transaction's
# events would come before it in the log although their versions follow it
# (TransactionConflict).
_REFUSAL = """CASE
    WHEN c.own IS NULL THEN 'unclaimed'
    WHEN coalesce((SELECT e.tx > c.own FROM {schema}.events AS e
                   WHERE e.stream = %(stream)b ORDER BY e.version DESC LIMIT 1), false)
    THEN 'newer'
END"""
_MARK = "set_config({mark_name}, 'on', true)"


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
            "checkpoint_channel_name": sql.Identifier(f"{schema}.checkpoints"),
            "checkpoint_notify": (
                sql.SQL("pg_notify({}, position::text || ' ' || name)").format(
                    sql.Literal(f"{schema}.checkpoints")
                )
                if notify
                else sql.SQL("NULL")
            ),
        }
        values["mark_name"] = sql.Literal(f"eventfold.appends_{schema}")
        # Fragments of the statements that read the log (comments dropped: a
        # fragment goes in the middle of a line).
        fragments = (("writers", _TEXT["log_writers"]), ("horizon", _TEXT["log_horizon"]))
        for fragment, text in fragments:
            code = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
            values[fragment] = sql.SQL(code).format(**values)
        values.update(
            claim=sql.SQL("(SELECT NULL::xid8 AS own)"),
            refusal=sql.SQL("NULL::text"),
            mark=sql.NULL,
        )
        self._rendered: dict[str, bytes] = {
            name: sql.SQL(text).format(**values).as_bytes(None) for name, text in _TEXT.items()
        }
        # Appends inside a longer transaction choose their rows' tx (see _OWN).
        values["unmarked"] = sql.SQL(_UNMARKED).format(**values)
        values.update(
            claim=sql.SQL(_CLAIM).format(**values),
            refusal=sql.SQL(_REFUSAL).format(**values),
            mark=sql.SQL(_MARK).format(**values),
        )
        for name in ("append", "append_one"):
            self._rendered[f"{name}_in_transaction"] = (
                sql.SQL(_TEXT[name]).format(**values).as_bytes(None)
            )

    def __getitem__(self, name: str) -> bytes:
        return self._rendered[name]

    def migrations(self, current: int) -> list[tuple[int, bytes]]:
        """The migration scripts after version ``current``, in order."""
        return [
            (version, self._rendered[f"migration_{version}"])
            for version in range(current + 1, LATEST_SCHEMA_VERSION + 1)
        ]


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
        low, high = 0, BIGINT_MAX
    elif expected is NO_STREAM:
        low, high = 0, 0
    elif expected is STREAM_EXISTS:
        low, high = 1, BIGINT_MAX
    elif isinstance(expected, int) and expected <= BIGINT_MAX:
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
