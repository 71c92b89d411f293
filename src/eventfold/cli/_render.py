"""Rendering stored events for the terminal (shared by ``show`` and the demo)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import msgspec
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from eventfold import RecordedEvent, Serializer, TypeRegistry

__all__ = ["browse_serializer", "dollars", "history_table", "payload_json", "timestamp"]


def browse_serializer() -> Serializer:
    """A serializer that returns every payload as the stored JSON object.

    Browsing must work on any file, whatever event classes this process has
    imported, so nothing is decoded into classes (and nothing is upcast).
    """
    return Serializer(TypeRegistry(), on_unknown="raw")


def dollars(cents: int) -> str:
    """``12345`` -> ``"$123.45"`` (integer arithmetic: money is never a float)."""
    sign = "-" if cents < 0 else ""
    whole, rest = divmod(abs(cents), 100)
    return f"{sign}${whole:,}.{rest:02d}"


def payload_json(data: object) -> str:
    """An event payload (a struct, dataclass or decoded dict) as one line of JSON."""
    return msgspec.json.encode(data).decode()


def timestamp(moment: datetime) -> str:
    """A recorded-at time in UTC with milliseconds, e.g. ``2025-01-31 12:00:00.123Z``."""
    utc = moment.astimezone(UTC)
    return f"{utc:%Y-%m-%d %H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def history_table(stream: str, events: Iterable[RecordedEvent]) -> Table:
    """A table of a stream's events: version, event type, data, recorded at."""
    table = Table(title=f"history of {escape(stream)}", title_justify="left")
    table.add_column("version", justify="right")
    table.add_column("event type", no_wrap=True)
    table.add_column("data", overflow="fold")
    table.add_column("recorded at (UTC)", no_wrap=True)
    for event in events:
        # Text, not markup: stored names and payloads may contain "[...]".
        table.add_row(
            str(event.version),
            Text(event.type),
            Text(payload_json(event.data)),
            timestamp(event.recorded_at),
        )
    return table
