"""Command handling, sync and async: load -> decide -> append -> retry on conflict."""

from eventfold.commands._handler import CommandHandler
from eventfold.commands._handler_async import AsyncCommandHandler
from eventfold.commands._types import (
    COMMAND_DIGEST,
    IDEMPOTENCY_KEY,
    CommandResult,
    HistoryEntry,
    Loaded,
    command_digest,
    idempotent_event_id,
)

__all__ = [
    "COMMAND_DIGEST",
    "IDEMPOTENCY_KEY",
    "AsyncCommandHandler",
    "CommandHandler",
    "CommandResult",
    "HistoryEntry",
    "Loaded",
    "command_digest",
    "idempotent_event_id",
]
