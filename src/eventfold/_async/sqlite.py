"""The SQLite event store: the embedded default, one file, no server.

The file uses WAL mode (readers never block the writer) and the durability
you choose (``full`` by default: every acknowledged append survives power
loss). Several threads and several processes may use one file: appends take
SQLite's write lock before checking the expected version, so two writers of
one stream get one winner and one WrongExpectedVersion, never a duplicated
version. Writers are serialised, so positions follow commit order and a
tailing ``read_all`` reader never skips an event.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from eventfold._async.store import AsyncStoreBase
from eventfold._runner import AsyncRunner
from eventfold.serialization import Serializer
from eventfold.store._common import AppendResult, EncodedEvent, Expected, Row, StreamInfo
from eventfold.store._sqlite_db import Durability, SqliteDatabase

__all__ = ["AsyncSqliteEventStore"]


class AsyncSqliteEventStore(AsyncStoreBase):
    """An event store in one SQLite file.

    :param path: the database file (created if missing) or ``":memory:"``.
    :param durability: ``"full"`` (default), ``"normal"`` or ``"off"``; see
        :data:`eventfold.store.sqlite.Durability`.
    :param busy_timeout: seconds a writer waits for another process's write
        lock before StoreTimeout.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "full",
        busy_timeout: float = 5.0,
        serializer: Serializer | None = None,
        page_size: int = 500,
    ) -> None:
        super().__init__(serializer=serializer, page_size=page_size)
        self._db = SqliteDatabase(path, durability=durability, busy_timeout=busy_timeout)
        self._runner = AsyncRunner()

    @property
    def path(self) -> str:
        """The database file."""
        return self._db.path

    async def _append(
        self, stream: str, batch: list[EncodedEvent], expected: Expected
    ) -> AppendResult:
        return await self._runner.run(self._db.append, stream, batch, expected)

    async def _read_page(
        self, stream: str, cursor: int, backwards: bool, count: int
    ) -> Sequence[Row]:
        return await self._runner.run(self._db.read_page, stream, cursor, backwards, count)

    async def _read_all_page(
        self, after: int, types: list[str] | None, prefix: str | None, count: int
    ) -> Sequence[Row]:
        return await self._runner.run(self._db.read_all_page, after, types, prefix, count)

    async def _get_stream(self, stream: str) -> StreamInfo | None:
        version, meta = await self._runner.run(self._db.stream_version_and_metadata, stream)
        if version == 0:
            return None
        return StreamInfo(stream, version, self.serializer.decode_metadata(meta))

    async def _set_stream_metadata(self, stream: str, metadata: bytes | None) -> None:
        await self._runner.run(self._db.set_stream_metadata, stream, metadata)

    async def _last_position(self) -> int:
        return await self._runner.run(self._db.last_position)

    async def _close(self) -> None:
        self._runner.close()
        self._db.close()
