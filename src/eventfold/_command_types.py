"""Types shared by the sync and async command handlers (not generated)."""

from __future__ import annotations

import uuid
from typing import Any, Generic, TypeVar

import msgspec

from eventfold.events import RecordedEvent

__all__ = ["IDEMPOTENCY_KEY", "CommandResult", "HistoryEntry", "Loaded", "idempotent_event_id"]

S = TypeVar("S")

#: Metadata key under which a command's idempotency key is stored with its events.
IDEMPOTENCY_KEY = "idempotency_key"
_ID_NAMESPACE = uuid.UUID("6f1c0d3e-5a3b-4c8e-9d55-2f0e8a1b7c41")


class Loaded(msgspec.Struct, Generic[S], frozen=True):
    """A stream's state rebuilt from its events, and the version it reflects."""

    state: S
    version: int


class CommandResult(msgspec.Struct, Generic[S], frozen=True):
    """What a handled command did.

    ``events`` are the event objects written (empty when ``decide`` returned
    none); ``version`` and ``position`` are the stream version and global
    position after them. ``replayed`` is True when the command's idempotency
    key was already stored: nothing was written and ``events`` are the ones
    the first attempt wrote.
    """

    state: S
    events: tuple[Any, ...]
    version: int
    position: int = 0
    replayed: bool = False


def idempotent_event_id(stream: str, key: str, index: int) -> uuid.UUID:
    """The id of the ``index``-th event of the command with ``key`` on ``stream``.

    Derived, not random, so that two racing deliveries of one command produce
    the same ids and the store's idempotent append keeps only one of them.
    """
    return uuid.uuid5(_ID_NAMESPACE, f"{stream}\x00{key}\x00{index}")


class HistoryEntry(msgspec.Struct, Generic[S], frozen=True):
    """One step of a stream's history: the event and the state right after it."""

    event: RecordedEvent
    state: S
