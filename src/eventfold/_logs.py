"""What eventfold's log records carry besides their message, for structured handlers.

Every warning and error about a projection, a stream or an event names them
in its message and also in these record attributes (``extra``), so a JSON
formatter or a log pipeline can filter on them: ``projection``, ``stream``,
``version``, ``position`` (each only where it applies). The loggers, one per
component, are listed in docs/architecture.md ("Logs").
"""

from __future__ import annotations

from typing import Any

from eventfold.events import RecordedEvent

__all__ = ["fields"]


def fields(
    *,
    projection: str | None = None,
    stream: str | None = None,
    version: int | None = None,
    position: int | None = None,
    event: RecordedEvent | None = None,
) -> dict[str, Any]:
    """The ``extra`` of a log record (an ``event`` gives its stream, version and position)."""
    if event is not None:
        stream, version, position = event.stream, event.version, event.position
    found = {"projection": projection, "stream": stream, "version": version, "position": position}
    return {name: value for name, value in found.items() if value is not None}
