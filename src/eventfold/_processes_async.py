r"""Process managers (sagas): events in, idempotent commands out.

A process manager reacts to recorded events by sending commands, possibly
to other aggregates: a money transfer debits one account, then credits the
other, and refunds the first if the credit is rejected. It runs as an
``external`` projection (see :mod:`eventfold.projections`): events are
delivered at least once, so every command it sends carries an idempotency
key derived from the triggering event's id and the command's place in the
reaction. A redelivered event therefore re-sends commands that the command
handler recognises and does not run twice, across crashes and restarts.

A process manager runs on a projection runner of its store's flavour
(``runner(store)``) and dispatches to command handlers of that flavour; the
async flavour's ``react`` and ``on_rejected`` may also be ``async def``.

Keep a process's decisions in events (the saga's own stream, or the
aggregates' events) rather than in memory: ``react`` may then look at that
state, and a redelivery finds the decision already made. ``react`` must
send the same commands for the same event: a redelivery that sends another
command under a key already used raises ``IdempotencyKeyReused``, which
meets the error policy (nothing is sent twice, nothing silently replayed).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eventfold._logs import fields
from eventfold.commands import AsyncCommandHandler
from eventfold.errors import ConfigurationError, EventfoldError, InvalidRequest
from eventfold.events import RecordedEvent, caused_by
from eventfold.projections import AsyncProjectionRunner, ErrorPolicy, Projection, ProjectionContext
from eventfold.store import AsyncEventStore

__all__ = ["AsyncDispatch", "AsyncProcessManager"]

_ASYNC = True  # unasync: _ASYNC = False

logger = logging.getLogger("eventfold.processes")


@dataclass(frozen=True)
class AsyncDispatch:
    """A command for ``stream``, sent through ``handler``."""

    handler: AsyncCommandHandler[Any, Any]
    stream: str
    command: Any


#: What a reaction returns: the commands (awaitable in the async flavour).
_Commands = Sequence[AsyncDispatch]
_Sent = _Commands | Awaitable[_Commands]  # unasync: _Sent = _Commands
React = Callable[[RecordedEvent], _Sent]
OnRejected = Callable[[RecordedEvent, AsyncDispatch, Exception], _Sent]


async def _sent(commands: _Sent) -> Sequence[AsyncDispatch]:
    """The commands of a reaction, awaited if it was an ``async def``."""
    if inspect.isawaitable(commands):  # unasync: remove
        return await commands  # unasync: remove
    return commands


class AsyncProcessManager:
    """Turns events into commands, idempotently.

    :param name: the checkpoint name, and the prefix of idempotency keys.
    :param react: ``react(event) -> [Dispatch, ...]``.
    :param on_rejected: ``on_rejected(event, dispatch, error)`` for a command
        rejected by the model's own exception: returns the compensating
        commands (e.g. a refund). The reaction's later commands are still
        sent, so make them depend on recorded state (they may decide nothing).
        Without it a rejection goes to the error policy like any failure.
    :param rejections: the exception types that count as rejections (default:
        any exception that is not an eventfold error); others go to the
        error policy.

    A rejected command stores nothing, so its idempotency key cannot stop it
    from being decided again on redelivery: record the outcome in events
    (e.g. ``TransferFailed``) and let ``react`` check that state first.
    """

    def __init__(
        self,
        name: str,
        react: React,
        *,
        types: Sequence[str] | None = None,
        stream_prefix: str | None = None,
        on_rejected: OnRejected | None = None,
        rejections: tuple[type[Exception], ...] = (Exception,),
        on_error: ErrorPolicy | None = None,
    ) -> None:
        if not name:
            raise InvalidRequest("a process manager needs a name")
        if not _ASYNC and any(map(inspect.iscoroutinefunction, (react, on_rejected))):
            raise ConfigurationError(
                f"process manager {name!r}: react/on_rejected is async def; use "
                "AsyncProcessManager with async command handlers"
            )
        self.name = name
        self.react = react
        self.on_rejected = on_rejected
        self.rejections = rejections
        self.projection = Projection(
            name,
            self._handle,
            types=types,
            stream_prefix=stream_prefix,
            external=True,
            on_error=on_error or ErrorPolicy(),
        )

    def runner(self, store: AsyncEventStore, **options: Any) -> AsyncProjectionRunner:
        """A runner of this process manager on ``store`` (options as the runner takes)."""
        return AsyncProjectionRunner(store, self.projection, **options)

    async def _handle(self, ctx: ProjectionContext, event: RecordedEvent) -> None:
        for index, dispatch in enumerate(await _sent(self.react(event))):
            await self._send(event, dispatch, f"{self.name}:{event.id}:{index}")

    async def _send(self, event: RecordedEvent, dispatch: AsyncDispatch, key: str) -> None:
        """Send one command; compensate it if the model rejects it."""
        try:
            await dispatch.handler.handle(
                dispatch.stream, dispatch.command, idempotency_key=key, metadata=caused_by(event)
            )
        except EventfoldError:
            raise  # store trouble: the error policy retries or stops
        except Exception as exc:
            if self.on_rejected is None or not isinstance(exc, self.rejections):
                raise
            logger.info(
                "process manager %s: %s for %r rejected (%s), reacting to %s in %r v%d; "
                "compensating",
                self.name,
                type(dispatch.command).__name__,
                dispatch.stream,
                exc,
                event.type,
                event.stream,
                event.version,
                extra=fields(projection=self.name, event=event),
            )
            compensations = await _sent(self.on_rejected(event, dispatch, exc))
            for index, compensation in enumerate(compensations):
                await self._send(event, compensation, f"{key}:rejected:{index}")
