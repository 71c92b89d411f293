"""A projection that the CLI tests load by module:attribute."""

from __future__ import annotations

from eventfold import CommandHandler, Decider
from eventfold.events import RecordedEvent
from eventfold.processes import Dispatch, ProcessManager
from eventfold.projections import Projection, ProjectionContext
from eventfold.store import EventStore
from eventfold.testing._events import Deposited

TABLE = "cli_counts"


def setup(ctx: ProjectionContext) -> None:
    ctx.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (stream TEXT PRIMARY KEY, n INTEGER)")


def teardown(ctx: ProjectionContext) -> None:
    ctx.execute(f"DROP TABLE IF EXISTS {TABLE}")


def handle(ctx: ProjectionContext, event: RecordedEvent) -> None:
    ctx.execute(
        f"INSERT INTO {TABLE} (stream, n) VALUES (?, 1) "
        f"ON CONFLICT (stream) DO UPDATE SET n = {TABLE}.n + 1",
        (event.stream,),
    )


counts = Projection("cli-counts", handle, setup=setup, teardown=teardown, batch_size=10)


# A process manager needs command handlers bound to a store: the CLI passes its own.
mirror_ledger: Decider[int, int, Deposited] = Decider(
    lambda amount, balance: [Deposited(amount=amount)], lambda b, e: b + e.amount, int
)


def mirror(store: EventStore) -> ProcessManager:
    """Mirror every deposit of a stream ``s-*`` into ``mirror-*``."""
    handler = CommandHandler(store, mirror_ledger)
    return ProcessManager(
        "cli-mirror",
        lambda event: [Dispatch(handler, f"mirror-{event.stream}", event.data.amount)],
        stream_prefix="s-",
    )
