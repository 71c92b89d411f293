"""A SQL projection catching up, and a writer beside it: the catch-up process of the
contention tests (``python -m tests.support.sqlite_catch_up PATH HEAD``).

The projection handles the backlog's Deposited events (some computing per
event, then an insert into its read model) in the store's own file; a writer
thread with a store object of its own appends Withdrawn events one at a time
meanwhile, recording with each append the projection's checkpoint it saw
(:func:`record_appends`). Prints one JSON line: what the runner and the writer
did.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from eventfold import SqliteEventStore, StoreTimeout
from eventfold.projections import Projection, ProjectionContext, ProjectionRunner, attach_inline
from eventfold.testing._events import Deposited, Withdrawn

PROJECTION = "catch-up"
BACKLOG_TYPE = Deposited.__event_type__
WRITER_TYPE = Withdrawn.__event_type__
HANDLER_SECONDS = 0.0003  # the handler's own computing per event


def record_appends(store: SqliteEventStore, writer: str) -> None:
    """Each append of ``store`` records, in its own transaction, the projection's
    checkpoint as committed before it: where the append fell between the batches."""

    def setup(ctx: ProjectionContext) -> None:
        ctx.execute(
            "CREATE TABLE IF NOT EXISTS writer_appends "
            "(writer TEXT, position INTEGER, checkpoint INTEGER)"
        )

    def handle(ctx: ProjectionContext, event: Any) -> None:
        row = ctx.execute(
            "SELECT position FROM eventfold_checkpoints WHERE name = ?", (PROJECTION,)
        ).fetchone()
        ctx.execute(
            "INSERT INTO writer_appends (writer, position, checkpoint) VALUES (?, ?, ?)",
            (writer, event.position, row[0] if row is not None else 0),
        )

    attach_inline(store, Projection(f"seen-{writer}", handle, types=[WRITER_TYPE], setup=setup))


def append_until(store: SqliteEventStore, stream: str, stop: threading.Event) -> dict[str, Any]:
    """Append one event at a time until ``stop``; count acknowledged appends and timeouts."""
    done = timeouts = 0
    errors: list[str] = []
    while not stop.is_set():
        try:
            store.append(stream, [Withdrawn(amount=1)], expected=done)
            done += 1
        except StoreTimeout:
            timeouts += 1
        except Exception as exc:
            errors.append(repr(exc))
            break
    return {"appends": done, "timeouts": timeouts, "errors": errors}


def handle(ctx: ProjectionContext, event: Any) -> None:
    until = time.perf_counter() + HANDLER_SECONDS
    while time.perf_counter() < until:
        pass  # the handler's own computing, holding the GIL as Python code does
    ctx.execute("INSERT INTO caught_up (position) VALUES (?)", (event.position,))


def setup(ctx: ProjectionContext) -> None:
    ctx.execute("CREATE TABLE IF NOT EXISTS caught_up (position INTEGER PRIMARY KEY)")


def main(path: str) -> None:
    with SqliteEventStore(path) as store, SqliteEventStore(path) as writer_store:
        record_appends(writer_store, "thread")
        stop = threading.Event()
        outcome: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: outcome.update(append_until(writer_store, "thread", stop)),
            name="writer-thread",
        )
        thread.start()
        try:
            projection = Projection(PROJECTION, handle, types=[BACKLOG_TYPE], setup=setup)
            handled = ProjectionRunner(store, projection).run_once()
        finally:
            stop.set()
            thread.join(60)
        print(json.dumps({"handled": handled, "thread": outcome}), flush=True)


if __name__ == "__main__":
    main(str(Path(sys.argv[1])))
