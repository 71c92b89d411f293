"""Projections seen from outside a runner: aliases for blue/green rebuilds, statuses."""

from __future__ import annotations

from eventfold._clock import now_us
from eventfold.errors import InvalidRequest
from eventfold.projections._model import Projection, ProjectionStatus
from eventfold.projections._runner_async import async_checkpoints_of, async_status_of
from eventfold.store import AsyncEventStore

__all__ = ["async_active_projection", "async_projection_statuses", "async_switch_projection"]


async def async_switch_projection(
    store: AsyncEventStore, alias: str, projection: Projection | str
) -> None:
    """Point readers of ``alias`` at ``projection``, in one atomic write.

    The rebuild without downtime: declare the new version of a read model as
    a second projection (new name, new tables), let its runner catch up
    beside the live one (``catch_up(progress=...)`` reports an ETA), then
    switch. Readers look the current one up with :func:`active_projection`.
    """
    name = projection if isinstance(projection, str) else projection.name
    if not isinstance(name, str) or not name or not isinstance(alias, str) or not alias:
        raise InvalidRequest("alias and projection name must be non-empty str")
    await async_checkpoints_of(store).set_alias(alias, name)


async def async_active_projection(store: AsyncEventStore, alias: str) -> str | None:
    """The name of the projection readers of ``alias`` should use (None: never switched)."""
    return await async_checkpoints_of(store).get_alias(alias)


async def async_projection_statuses(store: AsyncEventStore) -> list[ProjectionStatus]:
    """The status of every projection with a stored checkpoint (for tools and dashboards).

    ``running`` means a runner holds an unexpired lease; ``events_per_second``
    and ``last_error`` are only known to the runner itself (0 and None here).
    """
    checkpoints = async_checkpoints_of(store)
    now = now_us()
    statuses = []
    for name in await checkpoints.names():
        checkpoint = await checkpoints.get(name)
        if checkpoint is None:
            continue
        running = checkpoint.owner is not None and checkpoint.lease_expires_us > now
        status = await async_status_of(checkpoints, name, checkpoint.position, running=running)
        statuses.append(status)
    return statuses
