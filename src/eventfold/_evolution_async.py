"""Offline stream migration: rewrite a stream into a new one with upcast events.

Upcasting on read is the normal way to evolve schemas: stored data is never
rewritten. For the rare case where you want the new shape stored (to retire
an upcaster chain, or to split a huge stream), copy the stream: every event
is read through the upcasters, optionally transformed, and appended to a new
stream in the current schema. The source stays untouched; switch readers to
the target, then retire the source (soft delete) when you are sure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eventfold._checks import check_non_negative
from eventfold.errors import InvalidRequest
from eventfold.events import NewEvent, RecordedEvent
from eventfold.store import NO_STREAM, AppendResult, AsyncEventStore

__all__ = ["MIGRATED_FROM", "async_migrate_stream"]

#: Metadata key naming the source event of a migrated event: "stream@version".
MIGRATED_FROM = "migrated_from"


async def async_migrate_stream(
    store: AsyncEventStore,
    source: str,
    target: str,
    *,
    target_store: AsyncEventStore | None = None,
    transform: Callable[[RecordedEvent], Any | None] | None = None,
    batch_size: int = 500,
) -> AppendResult:
    """Copy ``source`` into the new stream ``target``, upcast to current schemas.

    ``transform`` may return a replacement payload, or None to drop an event.
    Metadata is kept, plus ``migrated_from`` (``"source@version"``). The
    target must not exist; it is written in batches of ``batch_size`` with
    exact expected versions, so a concurrent writer to it fails the copy.
    """
    if source == target and target_store is None:
        raise InvalidRequest("target must differ from source")
    check_non_negative("batch_size", batch_size, minimum=1)
    destination = target_store if target_store is not None else store
    version = 0
    positions: list[int] = []
    batch: list[NewEvent] = []

    async def flush() -> None:
        nonlocal version
        result = await destination.append(target, batch, expected=version if version else NO_STREAM)
        version = result.to_version
        positions.extend(result.positions)
        batch.clear()

    async for event in store.read(source):
        data = event.data if transform is None else transform(event)
        if data is None:
            continue
        metadata = {**event.metadata, MIGRATED_FROM: f"{source}@{event.version}"}
        batch.append(NewEvent(data=data, metadata=metadata))
        if len(batch) >= batch_size:
            await flush()
    if batch:
        await flush()
    if version == 0:
        # Nothing to copy: still check the target does not exist, as promised.
        await destination.append(target, [], expected=NO_STREAM)
    return AppendResult(target, 1, version, positions[-1] if positions else 0, tuple(positions))
