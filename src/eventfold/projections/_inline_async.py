"""Inline projections: a projection run inside every append's transaction."""

from __future__ import annotations

from typing import Any

from eventfold.errors import InvalidRequest
from eventfold.events import RecordedEvent
from eventfold.projections._model import Projection, ProjectionContext
from eventfold.projections._runner_async import _call, check_flavour, check_handlers
from eventfold.store import AsyncAppendHook, AsyncEventStore, AsyncHookTransaction

__all__ = ["async_attach_inline", "async_detach_inline"]

_attached: dict[tuple[int, str], AsyncAppendHook] = {}


async def async_attach_inline(store: AsyncEventStore, projection: Projection) -> None:
    """Run ``projection`` inside the transaction of every append to ``store``.

    Read-your-writes: once ``append`` (or a command) returns, the read model
    already shows its events. The price is on the write path: the handler
    runs in every append, and if it raises, the append fails and nothing is
    stored. It is an append hook (``store.add_append_hook``). On the memory
    store the handler runs under the store's lock and must not call the
    store, and a handler that fails midway through a batch keeps its own
    effects of the events before (there is no database transaction to roll
    them back). :func:`async_detach_inline` stops it.

    On an async store the handler and setup may be ``async def``, awaiting
    ``ctx.execute(...)``: awaited on PostgreSQL; on SQLite and in memory they
    run inside the append and may wait for nothing else (InvalidRequest, and
    nothing is stored).
    """
    if projection.in_memory or projection.external:
        raise InvalidRequest("an inline projection writes in the append's transaction")
    check_handlers(projection)
    check_flavour(store, store.last_position)
    prefix = projection.stream_prefix
    # The filter's stored names, computed again when names or aliases change.
    cache: list[Any] = [None, -1, None]

    async def hook(tx: AsyncHookTransaction, events: list[RecordedEvent]) -> None:
        registry = store.serializer.registry
        if projection.types is None:
            types = None
        elif cache[0] is registry and cache[1] == registry.generation:
            types = cache[2]
        else:
            types = frozenset(registry.stored_names(list(projection.types)))
            cache[:] = [registry, registry.generation, types]
        ctx = ProjectionContext(projection, tx)
        for event in events:
            if (types is None or event.type in types) and (
                prefix is None or event.stream.startswith(prefix)
            ):
                await _call(projection.handle, ctx, event)

    store.add_append_hook(hook)  # refused by a store that takes no hooks
    if projection.setup is not None:
        try:
            async with store.transaction() as tx:
                await _call(projection.setup, ProjectionContext(projection, tx))
        except BaseException:
            store.remove_append_hook(hook)
            raise
    _attached[(id(store), projection.name)] = hook


async def async_detach_inline(store: AsyncEventStore, projection: Projection) -> None:
    """Stop running ``projection`` in the appends to ``store``."""
    hook = _attached.pop((id(store), projection.name), None)
    if hook is None:
        raise InvalidRequest(f"projection {projection.name!r} is not attached to this store")
    store.remove_append_hook(hook)
