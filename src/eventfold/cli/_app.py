"""The typer application behind the ``eventfold`` command."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from eventfold import EventfoldError, RecordedEvent, SqliteEventStore
from eventfold.cli._demo import DemoError, run_demo
from eventfold.cli._render import browse_serializer, history_table, timestamp

__all__ = ["app"]

app = typer.Typer(
    name="eventfold",
    help="Event sourcing for Python: run the demo, browse SQLite event stores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ExistingDb = Annotated[
    Path,
    typer.Option("--db", help="An eventfold SQLite file.", exists=True, dir_okay=False),
]


def _fail(message: str) -> NoReturn:
    Console(stderr=True, highlight=False).print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(1)


def _open(db: Path) -> SqliteEventStore:
    try:
        return SqliteEventStore(db, serializer=browse_serializer())
    except EventfoldError as exc:
        _fail(str(exc))


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
def streams(db: ExistingDb) -> None:
    """List the streams of an event store with their versions (from the global log)."""
    last_events: dict[str, RecordedEvent] = {}
    total = 0
    try:
        with _open(db) as store:
            for event in store.read_all():
                last_events[event.stream] = event
                total += 1
    except EventfoldError as exc:
        _fail(str(exc))
    console = Console(highlight=False)
    if not last_events:
        console.print(f"no events in {escape(str(db))}", soft_wrap=True)
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
    db: ExistingDb,
) -> None:
    """Print a stream's history: version, event type, data, recorded at."""
    try:
        with _open(db) as store:
            events = list(store.read(stream))
    except EventfoldError as exc:
        _fail(str(exc))
    if not events:
        _fail(f"stream {stream!r} has no events in {db}")
    Console(highlight=False).print(history_table(stream, events))
