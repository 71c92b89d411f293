"""Snapshot policies: when to save a state, and how to encode it safely.

A snapshot is a cache of a stream's state at a version, stored beside the
events. Loading takes the newest snapshot and folds only the events after it.
Two rules keep this cache from ever producing a wrong state:

* a snapshot records its ``state_type`` and ``schema_version``; one that does
  not match the policy (the state class changed) is ignored and the state is
  rebuilt from events (:meth:`SnapshotPolicy.prune` deletes such snapshots);
* a state is only saved if its encoding round-trips to an equal state, so a
  state holding something JSON cannot carry (a set, a custom object without
  ``__eq__``) is never snapshotted, instead of coming back altered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec

from eventfold.aggregate import Aggregate
from eventfold.errors import InvalidRequest

__all__ = ["SnapshotPolicy"]

S = TypeVar("S")

logger = logging.getLogger("eventfold.snapshots")

_ENCODER = msgspec.json.Encoder()


class SnapshotPolicy(Generic[S]):
    """When to snapshot a stream's state, under which name and schema version.

    :param every: snapshot whenever an append crosses a multiple of ``every``
        versions (e.g. 100: at versions 100, 200, ...).
    :param when: or decide yourself: ``when(state, version) -> bool`` after
        each successful command.
    :param schema_version: bump it when the state class changes shape; older
        snapshots are then ignored.
    :param state_type: the stored name of the state (default: its class's
        qualified name).
    """

    def __init__(
        self,
        *,
        every: int | None = None,
        when: Callable[[S, int], bool] | None = None,
        schema_version: int = 1,
        state_type: str | None = None,
    ) -> None:
        if (every is None) == (when is None):
            raise InvalidRequest("give exactly one of every= or when=")
        if every is not None and (
            isinstance(every, bool) or not isinstance(every, int) or every < 1
        ):
            raise InvalidRequest(f"every must be an int >= 1, not {every!r}")
        if (
            isinstance(schema_version, bool)
            or not isinstance(schema_version, int)
            or schema_version < 1
        ):
            raise InvalidRequest(f"schema_version must be an int >= 1, not {schema_version!r}")
        self.every = every
        self.when = when
        self.schema_version = schema_version
        self.state_type = state_type
        self._state_class: type[Any] | None = None
        self._unsafe_warned = False

    def bind(self, initial_state: Callable[[], S]) -> None:
        """Learn the state class from the model's initial state (done by the handler)."""
        sample = initial_state()
        self._state_class = type(sample)
        if self.state_type is None:
            self.state_type = f"{self._state_class.__module__}.{self._state_class.__qualname__}"

    def is_due(self, state: S, from_version: int, to_version: int) -> bool:
        """Whether an append that wrote ``from_version..to_version`` calls for a snapshot."""
        if self.every is not None:
            return to_version // self.every > (from_version - 1) // self.every
        return self.when is not None and bool(self.when(state, to_version))

    def encode(self, state: S) -> bytes | None:
        """The snapshot bytes of ``state``, or None if it would not round-trip exactly."""
        try:
            data = _ENCODER.encode(_plain(state))
            restored = self.decode(data)
        except (TypeError, ValueError, msgspec.MsgspecError) as exc:
            self._warn_unsafe(f"cannot encode {type(state).__qualname__}: {exc}")
            return None
        if _plain(restored) != _plain(state):
            self._warn_unsafe(f"{type(state).__qualname__} does not round-trip through JSON")
            return None
        return data

    def decode(self, data: bytes) -> S:
        """Rebuild a state from snapshot bytes."""
        cls = self._state_class
        if cls is None:
            raise InvalidRequest("SnapshotPolicy is not bound to a model yet")
        if issubclass(cls, Aggregate):
            aggregate: Any = cls.__new__(cls)
            aggregate.__dict__.update(msgspec.json.decode(data, type=dict[str, Any]))
            return aggregate  # type: ignore[no-any-return]
        result: S = msgspec.json.decode(data, type=cls)
        return result

    def _warn_unsafe(self, why: str) -> None:
        if not self._unsafe_warned:
            self._unsafe_warned = True
            logger.warning("snapshots disabled for %s: %s", self.state_type, why)


def _plain(state: Any) -> Any:
    # A class-style aggregate is snapshotted as its public attributes.
    if isinstance(state, Aggregate):
        return {k: v for k, v in vars(state).items() if not k.startswith("_")}
    return state
