"""Types shared by the sync and async command handlers (not generated)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import uuid
from typing import Any, Generic, TypeVar

import msgspec

from eventfold._roundtrip import is_pydantic_model
from eventfold.decider import Loaded
from eventfold.errors import IdempotencyKeyReused, InvalidRequest
from eventfold.events import RecordedEvent

__all__ = [
    "COMMAND_DIGEST",
    "IDEMPOTENCY_KEY",
    "CommandResult",
    "HistoryEntry",
    "Loaded",
    "check_command_digest",
    "command_digest",
    "idempotent_event_id",
    "keyed_digest",
]

S = TypeVar("S")

logger = logging.getLogger("eventfold.commands")

#: Metadata key under which a command's idempotency key is stored with its events.
IDEMPOTENCY_KEY = "idempotency_key"
#: Metadata key, beside :data:`IDEMPOTENCY_KEY`, of the digest of the keyed command.
COMMAND_DIGEST = "command_digest"
_ID_NAMESPACE = uuid.UUID("6f1c0d3e-5a3b-4c8e-9d55-2f0e8a1b7c41")
# Struct and dataclass fields and dict keys sorted: the digest does not depend on
# the order in which a command's fields are declared or its dicts were filled.
_CANONICAL = msgspec.json.Encoder(order="sorted")
_undigestable_warned: set[type[Any]] = set()


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


def command_digest(command: object) -> str | None:
    """The fingerprint of a data command: ``sha256:`` and the hex digest of its canonical JSON.

    The JSON is that of ``[type name, command]`` (module and qualified name
    of the class, then its fields with keys sorted), so ``Debit(30)`` and
    ``Credit(30)`` differ and field order does not matter. None for a
    callable (a class-style aggregate's command is code, not data) and for
    an object msgspec cannot encode (logged once per type): such commands
    are fingerprinted only by an explicit ``command_digest=`` passed to
    ``handle``.
    """
    cls = type(command)
    pydantic = is_pydantic_model(cls)
    is_data = isinstance(command, msgspec.Struct) or dataclasses.is_dataclass(command) or pydantic
    if callable(command) and not is_data:
        return None
    try:
        fields = command.model_dump(mode="json") if pydantic else command  # type: ignore[attr-defined]
        canonical = _CANONICAL.encode([f"{cls.__module__}.{cls.__qualname__}", fields])
    except (TypeError, ValueError) as exc:
        if cls not in _undigestable_warned:
            _undigestable_warned.add(cls)
            logger.warning(
                "commands of type %s have no digest (%s): reuse of an idempotency key for "
                "a different command cannot be detected; pass command_digest=",
                cls.__qualname__,
                exc,
            )
        return None
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def keyed_digest(command: object, idempotency_key: str | None, explicit: str | None) -> str | None:
    """Validate ``handle``'s idempotency arguments; the digest to store with the key."""
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not idempotency_key
    ):
        raise InvalidRequest("idempotency_key must be a non-empty str")
    if explicit is not None:
        if not isinstance(explicit, str) or not explicit:
            raise InvalidRequest("command_digest must be a non-empty str")
        if idempotency_key is None:
            raise InvalidRequest("command_digest is only stored with an idempotency_key")
        return explicit
    return None if idempotency_key is None else command_digest(command)


def check_command_digest(stream: str, key: str, stored: object, digest: str | None) -> None:
    """Raise IdempotencyKeyReused if ``key`` was first stored with another command's digest.

    Events stored without a digest (by older eventfold versions, or for a
    callable command) cannot be compared and replay as before.
    """
    if stored is None or digest is None or stored == digest:
        return
    raise IdempotencyKeyReused(stream, key, str(stored), digest)
