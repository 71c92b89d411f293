"""Command handling, sync and async: load -> decide -> append -> retry on conflict."""

from eventfold._async.commands import AsyncCommandHandler
from eventfold._command_types import (
    COMMAND_DIGEST,
    IDEMPOTENCY_KEY,
    CommandResult,
    HistoryEntry,
    Loaded,
    command_digest,
    idempotent_event_id,
)
from eventfold._sync.commands import CommandHandler

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
