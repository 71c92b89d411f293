"""A projection that the CLI tests load by module:attribute."""

from __future__ import annotations

from eventfold.events import RecordedEvent
from eventfold.projections import Projection, ProjectionContext

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
