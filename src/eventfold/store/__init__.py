"""The event store protocol and the types every backend shares.

A store keeps streams of events. ``append`` is atomic (all events of a batch
or none), checks an expected version, and is idempotent by event id;
``append_many`` does the same for several streams in one transaction. ``read``
streams one stream's events; ``read_all`` the global log, in which a reader
that tails the log while writers commit sees every event exactly once, in one
order, and never finds a new event behind a position it has passed.

Each backend comes in a sync and an async flavour with the same methods;
:class:`EventStore` and :class:`AsyncEventStore` describe them for type
checkers, so code and third-party backends can depend on the protocol only.

The seams beside it: :class:`Checkpoints` (``store.checkpoints()``: named
checkpoints under fenced leases, dead letters, aliases, the wait for news),
:class:`Transaction` (``store.transaction()``: work that commits together)
and append hooks (``store.add_append_hook``). A projection runner uses
nothing else, so a third-party store that provides them runs projections.
"""

from __future__ import annotations

from eventfold.store._checkpoints import (
    Checkpoints,
    DirectTransaction,
    ProcessCheckpoints,
    Transaction,
    wait_in_slices,
)
from eventfold.store._checkpoints_async import (
    AsyncCheckpoints,
    AsyncDirectTransaction,
    AsyncProcessCheckpoints,
    AsyncTransaction,
    async_wait_in_slices,
)
from eventfold.store._hooks import (
    AppendHook,
    AsyncAppendHook,
    AsyncHookTransaction,
    HookTransaction,
)
from eventfold.store._protocol import EventStore
from eventfold.store._protocol_async import AsyncEventStore
from eventfold.store._rows import Undecodable
from eventfold.store._types import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    Checkpoint,
    DeadLetter,
    Deletion,
    Expected,
    Holdup,
    Snapshot,
    StreamAppend,
    StreamInfo,
    StreamState,
)

__all__ = [
    "ANY",
    "AppendHook",
    "AsyncAppendHook",
    "AsyncHookTransaction",
    "AppendResult",
    "AsyncCheckpoints",
    "AsyncDirectTransaction",
    "AsyncEventStore",
    "AsyncProcessCheckpoints",
    "AsyncTransaction",
    "Checkpoint",
    "Checkpoints",
    "DeadLetter",
    "Deletion",
    "DirectTransaction",
    "EventStore",
    "Expected",
    "Holdup",
    "HookTransaction",
    "NO_STREAM",
    "ProcessCheckpoints",
    "STREAM_EXISTS",
    "Snapshot",
    "StreamAppend",
    "StreamInfo",
    "StreamState",
    "Transaction",
    "Undecodable",
    "async_wait_in_slices",
    "wait_in_slices",
]
