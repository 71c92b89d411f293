"""Projections (read models) fed by the global log, with checkpoints and error policies.

A projection is declared as data: a name, the event types it handles, a
handler, optional setup/teardown. A :class:`ProjectionRunner` feeds it from
``read_all``: it catches up in batches, then waits for new events (LISTEN on
PostgreSQL, a cheap change counter on SQLite, a condition in memory).

Delivery and effects:

* A projection writing to the event store's own database (the default on
  SQLite and PostgreSQL) gets the driver connection in ``ctx.connection``: its
  writes and the checkpoint advance commit in **one transaction** per batch,
  so a crash at any point neither loses nor doubles an effect.
* ``in_memory=True``: the read model lives in the process; it is rebuilt from
  position 0 when the process starts, and the checkpoint is kept in memory.
* :func:`attach_inline` runs a projection inside every append's transaction
  instead, for read-your-writes consistency.
* ``external=True`` for effects elsewhere (commands to other streams, mail,
  HTTP): each event is delivered **at least once**, the checkpoint advancing
  after the handler returns; process managers use this with idempotent
  commands.

Only one runner per projection name works at a time: runners take a lease
(fenced: a runner that lost it cannot move the checkpoint), and another
process takes over when the holder stops renewing it.

:class:`ProjectionRunner` runs on the sync stores, :class:`AsyncProjectionRunner`
on the async ones (``AsyncSqliteEventStore``, ``AsyncPostgresEventStore``,
``AsyncMemoryEventStore``), with the same delivery, leases, error policies and
status; its handlers, setup and teardown may be ``async def``
(``await ctx.execute(...)``) or plain functions. Both use only public seams: a
store's ``checkpoints()`` (:class:`eventfold.store.Checkpoints`,
:class:`eventfold.store.AsyncCheckpoints`) and ``transaction()``.
"""

from eventfold.errors import LeaseHeld, LeaseLost, ProjectionStopped
from eventfold.projections._admin import active_projection, projection_statuses, switch_projection
from eventfold.projections._admin_async import (
    async_active_projection,
    async_projection_statuses,
    async_switch_projection,
)
from eventfold.projections._inline import attach_inline, detach_inline
from eventfold.projections._inline_async import async_attach_inline, async_detach_inline
from eventfold.projections._model import (
    SKIP,
    STOP,
    AsyncHandler,
    ErrorPolicy,
    Handler,
    Progress,
    Projection,
    ProjectionContext,
    ProjectionStatus,
)
from eventfold.projections._runner import ProjectionRunner
from eventfold.projections._runner_async import AsyncProjectionRunner
from eventfold.store import DeadLetter

__all__ = [
    "SKIP",
    "STOP",
    "AsyncHandler",
    "AsyncProjectionRunner",
    "DeadLetter",
    "ErrorPolicy",
    "Handler",
    "LeaseHeld",
    "LeaseLost",
    "Progress",
    "Projection",
    "ProjectionContext",
    "ProjectionRunner",
    "ProjectionStatus",
    "ProjectionStopped",
    "active_projection",
    "async_active_projection",
    "async_attach_inline",
    "async_detach_inline",
    "async_projection_statuses",
    "async_switch_projection",
    "attach_inline",
    "detach_inline",
    "projection_statuses",
    "switch_projection",
]
