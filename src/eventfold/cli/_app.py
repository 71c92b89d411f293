"""The typer application behind the ``eventfold`` command."""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from eventfold import EventfoldError, EventStore, RecordedEvent, SqliteEventStore
from eventfold.cli._demo import DemoError, run_demo
from eventfold.cli._render import browse_serializer, history_table, timestamp

__all__ = ["app"]

app = typer.Typer(
    name="eventfold",
    help="Event sourcing for Python: run the demo, browse and maintain event stores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Db = Annotated[
    Path | None,
    typer.Option("--db", help="An eventfold SQLite file.", exists=True, dir_okay=False),
]
Postgres = Annotated[
    str | None,
    typer.Option(
        "--postgres",
        help="A PostgreSQL conninfo (postgresql://user@host/db) instead of --db.",
        envvar="EVENTFOLD_POSTGRES",
    ),
]
Schema = Annotated[str, typer.Option(help="The PostgreSQL schema of the store.")]


def _fail(message: str) -> NoReturn:
    Console(stderr=True, highlight=False).print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(1)


def _open(
    db: Path | None,
    postgres: str | None,
    schema: str = "eventfold",
    *,
    raw: bool = True,
    read_only: bool = False,
) -> EventStore:
    """The store named by --db or --postgres.

    ``raw``: decode payloads without event classes (browsing any store);
    otherwise with the registered classes (running the user's projections).
    ``read_only``: a command that only reads opens a SQLite file read-only,
    so it works on backups and read-only mounts and never migrates the file.
    """
    if (db is None) == (postgres is None):
        _fail("name one store: --db PATH (SQLite) or --postgres CONNINFO")
    serializer = browse_serializer() if raw else None
    try:
        if db is not None:
            return SqliteEventStore(db, serializer=serializer, read_only=read_only)
        from eventfold.store.postgres import PostgresEventStore  # noqa: PLC0415 - extra

        return PostgresEventStore(postgres or "", schema=schema, serializer=serializer, max_size=2)
    except (EventfoldError, ImportError) as exc:
        _fail(str(exc))


def _where(db: Path | None, postgres: str | None, schema: str) -> str:
    return str(db) if db is not None else f"PostgreSQL schema {schema}"


@app.command()
def demo(
    db: Annotated[
        Path | None,
        typer.Option(
            help="SQLite file to create [default: bank.db in a new temporary directory].",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Run the bank-account example on a SQLite file, narrating each step."""
    path = db if db is not None else Path(tempfile.mkdtemp(prefix="eventfold-demo-")) / "bank.db"
    try:
        run_demo(path, Console(highlight=False))
    except (DemoError, EventfoldError) as exc:
        _fail(str(exc))


@app.command()
def streams(db: Db = None, postgres: Postgres = None, schema: Schema = "eventfold") -> None:
    """List the streams of an event store with their versions (from the global log)."""
    last_events: dict[str, RecordedEvent] = {}
    total = 0
    store = _open(db, postgres, schema, read_only=True)
    try:
        with store:
            for event in store.read_all():
                last_events[event.stream] = event
                total += 1
    except EventfoldError as exc:
        _fail(str(exc))
    console = Console(highlight=False)
    if not last_events:
        console.print(f"no events in {escape(_where(db, postgres, schema))}", soft_wrap=True)
        return
    table = Table(caption=f"{len(last_events)} streams, {total} events", caption_justify="left")
    table.add_column("stream")
    table.add_column("version", justify="right")
    table.add_column("last event")
    table.add_column("last recorded at (UTC)", no_wrap=True)
    for stream, event in last_events.items():
        table.add_row(
            Text(stream), str(event.version), Text(event.type), timestamp(event.recorded_at)
        )
    console.print(table)


@app.command()
def show(
    stream: Annotated[str, typer.Argument(help="The stream's name.")],
    db: Db = None,
    postgres: Postgres = None,
    schema: Schema = "eventfold",
) -> None:
    """Print a stream's history: version, event type, data, recorded at."""
    store = _open(db, postgres, schema, read_only=True)
    try:
        with store:
            events = list(store.read(stream))
    except EventfoldError as exc:
        _fail(str(exc))
    if not events:
        _fail(f"stream {stream!r} has no events in {_where(db, postgres, schema)}")
    Console(highlight=False).print(history_table(stream, events))


@app.command()
def migrate(
    postgres: Annotated[
        str,
        typer.Option(
            "--postgres",
            help="PostgreSQL conninfo (postgresql://user@host/db).",
            envvar="EVENTFOLD_POSTGRES",
        ),
    ],
    schema: Schema = "eventfold",
) -> None:
    """Create or upgrade the eventfold tables in a PostgreSQL schema (idempotent)."""
    try:
        from eventfold.store.postgres import migrate as migrate_schema  # noqa: PLC0415 - extra

        version = migrate_schema(postgres, schema=schema)
    except (EventfoldError, ImportError) as exc:
        _fail(str(exc))
    Console(highlight=False).print(
        f"schema {escape(schema)} is at eventfold schema version {version}"
    )


snapshots_app = typer.Typer(help="Maintain snapshots.", no_args_is_help=True)
app.add_typer(snapshots_app, name="snapshots")


@snapshots_app.command("prune")
def snapshots_prune(
    db: Db = None,
    postgres: Postgres = None,
    schema: Schema = "eventfold",
    stream: Annotated[str | None, typer.Option(help="Only this stream's snapshots.")] = None,
    state_type: Annotated[
        str | None, typer.Option(help="Only snapshots of this state type.")
    ] = None,
    keep_schema_version: Annotated[
        int | None,
        typer.Option(help="Keep snapshots of this schema version: delete only the stale ones."),
    ] = None,
) -> None:
    """Delete snapshots (all, or of a stream / state type, or only stale schema versions)."""
    store = _open(db, postgres, schema)
    try:
        with store:
            deleted = store.delete_snapshots(
                stream, state_type=state_type, keep_schema_version=keep_schema_version
            )
    except EventfoldError as exc:
        _fail(str(exc))
    Console(highlight=False).print(f"deleted {deleted} snapshots")


projections_app = typer.Typer(help="Run projections and watch their lag.", no_args_is_help=True)
app.add_typer(projections_app, name="projections")


@projections_app.command("status")
def projections_status(
    db: Db = None, postgres: Postgres = None, schema: Schema = "eventfold"
) -> None:
    """Position, lag and dead letters of every projection of a store."""
    from eventfold.projections import projection_statuses  # noqa: PLC0415 - keep start fast

    store = _open(db, postgres, schema, read_only=True)
    try:
        with store:
            statuses = projection_statuses(store)
    except EventfoldError as exc:
        _fail(str(exc))
    console = Console(highlight=False)
    if not statuses:
        console.print("no projections have run on this store")
        return
    table = Table()
    for column in ("projection", "position", "lag (events)", "lag (s)", "dead letters", "running"):
        table.add_column(column, justify="left" if column == "projection" else "right")
    for status in statuses:
        table.add_row(
            Text(status.name),
            str(status.position),
            str(status.lag_events),
            f"{status.lag_seconds:.1f}",
            str(status.dead_letters),
            "yes" if status.running else "no",
        )
    console.print(table)
    held = {h.xid: h for status in statuses for h in status.held_back_by}
    for holdup in held.values():
        console.print(f"readers of the log are held back by {escape(holdup.describe())}")


@app.command("holdups")
def holdups(db: Db = None, postgres: Postgres = None, schema: Schema = "eventfold") -> None:
    """The transactions that hold readers of the log back (PostgreSQL), oldest first."""
    store = _open(db, postgres, schema, read_only=True)
    try:
        with store:
            found = store.checkpoints().holdups()
    except EventfoldError as exc:
        _fail(str(exc))
    console = Console(highlight=False)
    if not found:
        console.print("nothing holds readers of the log back")
    for holdup in found:
        console.print(escape(holdup.describe()))


@projections_app.command("run")
def projections_run(
    target: Annotated[
        str,
        typer.Argument(
            help="module:attribute of a Projection or ProcessManager, or of a function "
            "that takes the store and returns one (for process managers whose command "
            "handlers need the store)."
        ),
    ],
    db: Db = None,
    postgres: Postgres = None,
    schema: Schema = "eventfold",
    rebuild: Annotated[bool, typer.Option(help="Tear down and replay from position 0.")] = False,
    wait: Annotated[
        float,
        typer.Option(
            help="With --rebuild: seconds to wait for a live runner to let the projection "
            "go (by default a live runner makes the rebuild refuse)."
        ),
    ] = 0.0,
    replay_effects: Annotated[
        bool,
        typer.Option(
            help="With --rebuild of an external projection (a process manager, a "
            "notifier): replay its effects too (its handlers see ctx.replaying)."
        ),
    ] = False,
) -> None:
    """Catch a projection up (optionally from scratch), with a progress bar and ETA.

    A rebuild never pulls a read model from under a live runner: it refuses,
    naming the runner, unless --wait lets that runner stop first. For a
    rebuild without downtime declare the new version under a new name, run
    it here beside the live one, then `eventfold projections switch`.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn  # noqa: PLC0415

    from eventfold.projections import ProjectionRunner  # noqa: PLC0415

    store = _open(db, postgres, schema, raw=False)
    projection = _load_projection(target, store)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} events"),
        TimeRemainingColumn(),
    )
    try:
        with store, Progress(*columns, console=Console(highlight=False)) as bar:
            runner = ProjectionRunner(store, projection)
            if rebuild:
                runner.reset(wait=wait, replay_effects=replay_effects)
            task = bar.add_task(projection.name, total=runner.status().lag_events)

            def report(progress: Any) -> None:
                bar.update(task, completed=progress.done, total=progress.done + progress.left)

            handled = runner.catch_up(progress=report)
            runner.release()
    except EventfoldError as exc:
        _fail(str(exc))
    Console(highlight=False).print(f"{projection.name}: {handled} events handled")


@projections_app.command("switch")
def projections_switch(
    alias: Annotated[str, typer.Argument(help="The name readers look up.")],
    target: Annotated[str, typer.Argument(help="The projection name readers should use now.")],
    db: Db = None,
    postgres: Postgres = None,
    schema: Schema = "eventfold",
) -> None:
    """Point readers of ALIAS at the projection TARGET (the end of a blue/green rebuild)."""
    from eventfold.projections import (  # noqa: PLC0415
        active_projection,
        projection_statuses,
        switch_projection,
    )

    store = _open(db, postgres, schema)
    try:
        with store:
            known = {status.name for status in projection_statuses(store)}
            if target not in known:
                _fail(f"no projection named {target!r} has run on this store: run it first")
            before = active_projection(store, alias)
            switch_projection(store, alias, target)
    except EventfoldError as exc:
        _fail(str(exc))
    Console(highlight=False).print(f"{alias}: {before or '(none)'} -> {target}")


def _load_projection(target: str, store: EventStore) -> Any:
    """The Projection named by module:attribute (a ProcessManager's, or a factory's result)."""
    from eventfold.projections import Projection  # noqa: PLC0415

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        _fail(f"expected module:attribute, not {target!r}")
    try:
        value = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        _fail(f"cannot load {target}: {exc}")
    if callable(value) and not isinstance(value, type):
        try:
            value = value(store)  # a factory: binds handlers to the CLI's store
        except EventfoldError as exc:
            _fail(f"{target}(store) failed: {exc}")
    value = getattr(value, "projection", value)  # a ProcessManager carries its projection
    if not isinstance(value, Projection):
        _fail(
            f"{target} is not a Projection or ProcessManager, nor a function of the store "
            "returning one"
        )
    return value
