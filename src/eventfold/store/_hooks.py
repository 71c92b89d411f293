"""Append hooks: work that runs inside every append's transaction (sync stores).

A hook is called with the append's transaction and the events it wrote,
after they are written and before the transaction commits; if it raises, the
append is rolled back and nothing is stored. Inline projections
(``eventfold.projections.attach_inline``) are hooks. Keep them small: they
add to the latency of every append.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from eventfold.errors import InvalidRequest
from eventfold.events import RecordedEvent
from eventfold.store._types import ANY, AppendResult, Expected

__all__ = ["AppendHook", "HookTransaction"]


class HookTransaction:
    """The append's transaction as a hook sees it: SQL yes, appends no.

    ``connection`` is the driver connection (None for the memory store);
    ``execute`` runs SQL with ``?`` placeholders through ``placeholder``.
    """

    def __init__(self, connection: Any, placeholder: str = "?") -> None:
        self.connection = connection
        self._placeholder = placeholder

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.connection is None:
            raise InvalidRequest("this store has no SQL database to run the hook's SQL in")
        if self._placeholder != "?":
            sql = sql.replace("?", self._placeholder)
        return self.connection.execute(sql, params)

    def append(
        self, stream: str, events: Sequence[object], *, expected: Expected = ANY
    ) -> AppendResult:
        raise InvalidRequest("an append hook cannot append: it runs inside an append")


#: ``hook(transaction, events)``: called in every append's transaction.
AppendHook = Callable[[HookTransaction, list[RecordedEvent]], None]
