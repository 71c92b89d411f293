"""Projections seen from outside a runner: aliases for blue/green rebuilds, statuses."""

from __future__ import annotations

from eventfold._clock import now_us
from eventfold.errors import InvalidRequest
from eventfold.projections._model import Projection, ProjectionStatus
from eventfold.projections._runner import checkpoints_of, status_of
from eventfold.store import EventStore

__all__ = ["active_projection", "projection_statuses", "switch_projection"]


def switch_projection(store: EventStore, alias: str, projection: Projection | str) -> None:
    """Point readers of ``alias`` at ``projection``, in one atomic write.

    The rebuild without downtime: declare the new version of a read model as
    a second projection (new name, new tables), let its runner catch up
    beside the live one (``catch_up(progress=...)`` reports an ETA), then
    switch. Readers look the current one up with :func:`active_projection`.
    """
    name = projection if isinstance(projection, str) else projection.name
    if not isinstance(name, str) or not name or not isinstance(alias, str) or not alias:
        raise InvalidRequest("alias and projection name must be non-empty str")
    checkpoints_of(store).set_alias(alias, name)


def active_projection(store: EventStore, alias: str) -> str | None:
    """The name of the projection readers of ``alias`` should use (None: never switched)."""
    return checkpoints_of(store).get_alias(alias)


def projection_statuses(store: EventStore) -> list[ProjectionStatus]:
    """The status of every projection with a stored checkpoint (for tools and dashboards).

    ``running`` means a runner holds an unexpired lease; ``events_per_second``
    and ``last_error`` are only known to the runner itself (0 and None here).
    """
    checkpoints = checkpoints_of(store)
    now = now_us()
    statuses = []
    for name in checkpoints.names():
        checkpoint = checkpoints.get(name)
        if checkpoint is None:
            continue
        running = checkpoint.owner is not None and checkpoint.lease_expires_us > now
        statuses.append(status_of(checkpoints, name, checkpoint.position, running=running))
    return statuses
