"""Snapshot policies: when to save a state, and how to encode it safely.

A snapshot is a cache of a stream's state at a version, stored beside the
events. Loading takes the newest snapshot and folds only the events after it.
The rule that keeps this cache honest: **a snapshot restores exactly the state
a full replay gives, or it is not written.**

* A snapshot records its ``state_type`` and ``schema_version``; one that does
  not match the policy (the state class changed) is ignored and the state is
  rebuilt from events (``prune_snapshots`` on the handler deletes such
  snapshots).
* Before a state is saved, its bytes are decoded again and the result is
  compared with the live state; a state that would come back altered (a set
  as a list, a custom object as a dict) is never snapshotted, and a warning
  is logged once per policy.
* A class-style aggregate is encoded as its whole instance state: every
  ``__dict__`` entry and ``__slots__`` value, private ones included, except
  the handler's pending events. It is restored by creating the aggregate the
  way replay does (``initial_state()``: the class called without arguments),
  then giving it exactly the stored attributes; the comparison before saving
  is attribute by attribute, types included (``1`` is not ``True``, a tuple
  is not a list). The encoding carries a format marker: snapshots written
  by older eventfold versions (public attributes only, restored without
  ``__init__``) are ignored, logged once, and the state is rebuilt from events.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import msgspec

from eventfold._checks import check_non_negative
from eventfold._logs import fields
from eventfold.aggregate import TRANSIENT_ATTRIBUTES, Aggregate
from eventfold.decider import Loaded
from eventfold.errors import InvalidRequest

if TYPE_CHECKING:
    from eventfold.store import Snapshot

__all__ = ["SnapshotPolicy"]

S = TypeVar("S")

logger = logging.getLogger("eventfold.snapshots")

_ENCODER = msgspec.json.Encoder()

# The encoding of a class-style aggregate: {FORMAT_KEY: FORMAT, "attributes":
# {...}, "slots": {...}}. The key is no Python identifier, so no attribute of an
# older, unmarked snapshot (a flat object of public attributes) can carry it.
_FORMAT_KEY = "eventfold:aggregate"
_FORMAT = 2


class _OutdatedSnapshot(ValueError):
    """Snapshot bytes in an encoding this eventfold no longer trusts."""


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
        if every is not None:
            check_non_negative("every", every, minimum=1)
        check_non_negative("schema_version", schema_version, minimum=1)
        self.every = every
        self.when = when
        self.schema_version = schema_version
        self.state_type = state_type
        self._state_class: type[Any] | None = None
        self._initial_state: Callable[[], S] | None = None
        self._unsafe_warned = False
        self._outdated_warned = False

    def bind(self, initial_state: Callable[[], S]) -> None:
        """Learn the state class from the model's initial state (done by the handler)."""
        sample = initial_state()
        self._state_class = type(sample)
        self._initial_state = initial_state
        if self.state_type is None:
            self.state_type = f"{self._state_class.__module__}.{self._state_class.__qualname__}"

    def is_due(self, state: S, from_version: int, to_version: int) -> bool:
        """Whether an append that wrote ``from_version..to_version`` calls for a snapshot."""
        if self.every is not None:
            return to_version // self.every > (from_version - 1) // self.every
        return self.when is not None and bool(self.when(state, to_version))

    def encode(self, state: S) -> bytes | None:
        """The snapshot bytes of ``state``, or None if they would not restore it exactly."""
        name = type(state).__name__
        try:
            data = _ENCODER.encode(_encodable(state))
            restored = self.decode(data)
        except (TypeError, ValueError, msgspec.MsgspecError) as exc:
            self._warn_unsafe(f"cannot encode {name}{_culprit(state)}: {exc}")
            return None
        difference = _difference(restored, state)
        if difference is not None:
            self._warn_unsafe(f"{name} would not come back equal from a snapshot: {difference}")
            return None
        return data

    def decode(self, data: bytes) -> S:
        """Rebuild a state from snapshot bytes."""
        cls = self._state_class
        if cls is None or self._initial_state is None:
            raise InvalidRequest("SnapshotPolicy is not bound to a model yet")
        if issubclass(cls, Aggregate):
            aggregate = self._initial_state()
            _restore_aggregate(cast(Aggregate, aggregate), data)
            return aggregate
        result: S = msgspec.json.decode(data, type=cls)
        return result

    def restore(self, snapshot: Snapshot) -> Loaded[S] | None:
        """The state stored in ``snapshot`` and its version, or None not to use it.

        None (the state is then rebuilt from events) for a snapshot of
        another state type or schema version, one in an encoding that older
        eventfold versions wrote, or undecodable data; the last two are logged.
        """
        if snapshot.state_type != self.state_type or snapshot.schema_version != self.schema_version:
            return None
        try:
            return Loaded(self.decode(snapshot.data), snapshot.version)
        except _OutdatedSnapshot:
            if not self._outdated_warned:
                self._outdated_warned = True
                logger.warning(
                    "ignoring snapshots of %s written by an older eventfold (e.g. %s@%s): "
                    "they hold public attributes only, so states are rebuilt from events; "
                    "rebuild_snapshot(stream) writes a current one, `eventfold snapshots "
                    "prune --state-type %s` deletes them",
                    self.state_type,
                    snapshot.stream,
                    snapshot.version,
                    self.state_type,
                    extra=fields(stream=snapshot.stream, version=snapshot.version),
                )
        except (ValueError, msgspec.MsgspecError) as exc:
            logger.warning(
                "ignoring undecodable snapshot of %s@%s: %s",
                snapshot.stream,
                snapshot.version,
                exc,
                extra=fields(stream=snapshot.stream, version=snapshot.version),
            )
        return None

    def _warn_unsafe(self, why: str) -> None:
        if not self._unsafe_warned:
            self._unsafe_warned = True
            logger.warning("snapshots disabled for %s: %s", self.state_type, why)


def _encodable(state: Any) -> Any:
    if isinstance(state, Aggregate):
        attributes, slots = _aggregate_state(state)
        return {_FORMAT_KEY: _FORMAT, "attributes": attributes, "slots": slots}
    return state


def _culprit(state: Any) -> str:
    """`` (attribute 'x')`` naming the first attribute of an aggregate that cannot be encoded."""
    if isinstance(state, Aggregate):
        for kind, held in zip(("attribute", "slot"), _aggregate_state(state), strict=True):
            for name, value in held.items():
                try:
                    _ENCODER.encode(value)
                except (TypeError, ValueError):
                    return f" ({kind} {name!r})"
    return ""


def _slot_descriptors(cls: type) -> dict[str, Any]:
    """The ``__slots__`` of ``cls`` and its bases: attribute name -> slot descriptor."""
    found: dict[str, Any] = {}
    for klass in cls.__mro__:
        declared = klass.__dict__.get("__slots__", ())
        for slot in (declared,) if isinstance(declared, str) else declared:
            if slot in ("__dict__", "__weakref__"):
                continue
            name = slot
            if slot.startswith("__") and not slot.endswith("__"):
                name = f"_{klass.__name__.lstrip('_')}{slot}"  # name mangling
            descriptor = klass.__dict__.get(name)
            # A subclass's slot of the same name shadows the base's.
            if descriptor is not None and hasattr(descriptor, "__set__"):
                found.setdefault(name, descriptor)
    return found


def _aggregate_state(aggregate: Aggregate) -> tuple[dict[str, Any], dict[str, Any]]:
    """Everything an aggregate holds: its ``__dict__`` and its set slots, no bookkeeping."""
    attributes = {
        name: value
        for name, value in getattr(aggregate, "__dict__", {}).items()
        if name not in TRANSIENT_ATTRIBUTES
    }
    slots: dict[str, Any] = {}
    for name, descriptor in _slot_descriptors(type(aggregate)).items():
        try:
            slots[name] = descriptor.__get__(aggregate, type(aggregate))
        except AttributeError:
            continue  # a slot never assigned: replay leaves it unset too
    return attributes, slots


def _restore_aggregate(aggregate: Aggregate, data: bytes) -> None:
    """Give a fresh aggregate exactly the attributes stored in ``data``."""
    document = msgspec.json.decode(data)
    if not isinstance(document, dict) or _FORMAT_KEY not in document:
        raise _OutdatedSnapshot("snapshot of public attributes only")
    attributes, slots = document.get("attributes"), document.get("slots")
    if document[_FORMAT_KEY] != _FORMAT or not (
        isinstance(attributes, dict) and isinstance(slots, dict)
    ):
        raise ValueError(f"not an aggregate snapshot of format {_FORMAT}")
    descriptors = _slot_descriptors(type(aggregate))
    unknown = slots.keys() - descriptors.keys()
    if unknown:
        raise ValueError(f"the snapshot has slots the class lacks: {sorted(unknown)}")
    namespace = getattr(aggregate, "__dict__", None)
    if namespace is not None:
        namespace.clear()
        namespace.update(attributes)
    elif attributes:
        raise ValueError("the snapshot has attributes but the class has only __slots__")
    for name, descriptor in descriptors.items():
        if name in slots:
            descriptor.__set__(aggregate, slots[name])
        else:
            with contextlib.suppress(AttributeError):  # or it was not set either
                descriptor.__delete__(aggregate)


def _difference(restored: Any, state: Any) -> str | None:
    """How ``restored`` differs from the live ``state``; None when it is the same."""
    if not isinstance(state, Aggregate):
        return None if restored == state else "it does not round-trip through JSON"
    if type(restored) is not type(state):
        return f"it is restored as a {type(restored).__qualname__}"
    for kind, live, back in zip(
        ("attribute", "slot"), _aggregate_state(state), _aggregate_state(restored), strict=True
    ):
        for name in sorted(live.keys() | back.keys()):
            if name not in back:
                return f"{kind} {name!r} is not restored"
            if name not in live:
                return f"{kind} {name!r} is restored but a replay does not have it"
            value, again = live[name], back[name]
            if type(value) is not type(again):
                return (
                    f"{kind} {name!r} holds {type(value).__qualname__}, "
                    f"restored as {type(again).__qualname__}"
                )
            if not _same(value, again):
                return (
                    f"{kind} {name!r} ({type(value).__qualname__}) does not come back "
                    "equal: it contains a value JSON does not keep (tuple, set, enum, non-str key)"
                )
    return None


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (JSON loses tuples, sets, enums)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return False
        keys_of_b = {key: key for key in b}  # equal keys may differ in type (StrEnum, str)
        return all(
            type(key) is type(keys_of_b[key]) and _same(value, b[key]) for key, value in a.items()
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
