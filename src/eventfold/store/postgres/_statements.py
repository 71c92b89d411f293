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
# The stream's newest event is a newer transaction's (append.sql's {newer}).
_NEWER = (
    "coalesce((SELECT e.tx > pg_current_xact_id() FROM {schema}.events AS e"
    " WHERE e.stream = %(stream)b ORDER BY e.version DESC LIMIT 1), false)"
)


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
        # Fragments of the statements that read the log (comments dropped: a
        # fragment goes in the middle of a line).
        fragments = (("writers", _TEXT["log_writers"]), ("horizon", _TEXT["log_horizon"]))
        for fragment, text in fragments:
            code = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
            values[fragment] = sql.SQL(code).format(**values)
        values["newer"] = sql.SQL("false")
        self._rendered: dict[str, bytes] = {
            name: sql.SQL(text).format(**values).as_bytes(None) for name, text in _TEXT.items()
        }
        # Appends inside a longer transaction refuse to number events after
        # those of a newer transaction (see append.sql).
        values["newer"] = sql.SQL(_NEWER).format(**values)
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
