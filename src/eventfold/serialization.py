"""Event type registry, serializer and upcasters.

Stored events carry a type name and a schema version next to their JSON
payload. The registry maps names to classes both ways; upcasters lift old
payloads (as plain dicts) one schema version at a time until they match the
class, so an event stored as v1 is read as v3 without rewriting stored data.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, NoReturn, TypeVar

import msgspec

from eventfold._roundtrip import (
    first_difference,
    is_pydantic_model,
    locate_encode_error,
    split_validation_error,
)
from eventfold.errors import (
    ConfigurationError,
    InvalidEvent,
    InvalidRequest,
    SerializationError,
    UnknownEventType,
)

__all__ = ["Serializer", "TypeRegistry", "Upcaster", "default_registry", "event_type"]

T = TypeVar("T", bound=type[Any])

#: An upcaster takes the payload of version N (a dict) and returns version N+1.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_JSON_ENCODER = msgspec.json.Encoder()
_JSON_DECODER = msgspec.json.Decoder()
_META_DECODER = msgspec.json.Decoder(dict[str, Any])
#: The metadata of events stored without any (shared, read-only).
EMPTY_METADATA: Mapping[str, Any] = MappingProxyType({})


class _TypeInfo:
    """One registered event type. The decoder is built on first use: a Struct
    class is not complete yet while ``__init_subclass__`` registers it.

    msgspec Structs and dataclasses go through msgspec; a pydantic model
    through its own validator and serializer, its errors raised as msgspec's
    (so every caller handles one kind).
    """

    __slots__ = ("cls", "convert", "decode", "encode", "name", "version")

    def __init__(self, cls: type[Any], name: str, version: int) -> None:
        self.cls = cls
        self.name = name
        self.version = version
        #: The typed decode function once built (the write path's hot lookup).
        self.decode: Callable[[bytes], Any] | None = None
        #: Event object -> JSON bytes.
        self.encode: Callable[[Any], bytes] = _JSON_ENCODER.encode
        #: Upcasted payload (a dict) -> event object.
        self.convert: Callable[[dict[str, Any]], Any] = self._convert
        if is_pydantic_model(cls):
            # No warnings: a value not of its field's type is refused (and named)
            # by the read-back check, as for a Struct.
            self.encode = functools.partial(cls.__pydantic_serializer__.to_json, warnings=False)
            self.decode = _pydantic_errors(cls.model_validate_json)
            self.convert = _pydantic_errors(cls.model_validate)

    @property
    def decoder(self) -> Callable[[bytes], Any]:
        """The typed decode function (raises msgspec's errors)."""
        if self.decode is None:
            self.decode = msgspec.json.Decoder(self.cls).decode
        return self.decode

    def _convert(self, payload: dict[str, Any]) -> Any:
        return msgspec.convert(payload, self.cls)


def _pydantic_errors(validate: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``validate`` raising pydantic's ValidationError as msgspec's (with its path)."""
    error = sys.modules["pydantic"].ValidationError

    def checked(value: Any) -> Any:
        try:
            return validate(value)
        except error as exc:
            first = exc.errors()[0]
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
            raise msgspec.ValidationError(f"{first['msg']} - at `${where}`") from exc

    return checked


#: Classes that are not event types though they are Structs, with the reason
#: (eventfold.events adds NewEvent and RecordedEvent).
NOT_EVENT_TYPES: dict[type[Any], str] = {}


def _is_event_class(cls: type[Any]) -> bool:
    return (
        issubclass(cls, msgspec.Struct) or dataclasses.is_dataclass(cls) or is_pydantic_model(cls)
    )


class TypeRegistry:
    """Maps event type names to classes and holds upcasters.

    Most code uses :data:`default_registry`, which :class:`~eventfold.Event`
    subclasses join automatically. Registering a second, different class under
    a name already taken raises :class:`~eventfold.ConfigurationError`
    (re-registering the same class, or a reloaded class of the same module and
    qualified name, is allowed).
    """

    def __init__(self) -> None:
        self._by_name: dict[str, _TypeInfo] = {}
        self._by_class: dict[type[Any], _TypeInfo] = {}
        self._aliases: dict[str, str] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        #: (stored type name, schema version) -> typed decode function, for the
        #: common case of data stored in the class's current version: filled as
        #: such events are read, and looked up by the stores' hot read path.
        self.decoders: dict[tuple[str, int], Callable[[bytes], Any]] = {}
        self._lock = threading.Lock()
        #: Counts changes to names and aliases (lets callers cache stored_names()).
        self.generation = 0

    def register(
        self, cls: type[Any], *, name: str | None = None, version: int | None = None
    ) -> None:
        """Register ``cls`` under ``name`` (default: ``__event_type__`` or the class name)."""
        refused = NOT_EVENT_TYPES.get(cls)
        if refused is not None:
            raise ConfigurationError(refused)
        if not _is_event_class(cls):
            raise ConfigurationError(
                f"{cls.__qualname__} cannot be an event type: use a msgspec.Struct "
                "(eventfold.Event), a dataclass or a pydantic model"
            )
        type_name = name or getattr(cls, "__event_type__", None) or cls.__name__
        schema_version = version or getattr(cls, "__event_version__", 1)
        if not isinstance(schema_version, int) or schema_version < 1:
            raise ConfigurationError(f"{type_name}: schema version must be an int >= 1")
        info = _TypeInfo(cls, type_name, schema_version)
        with self._lock:
            old = self._by_name.get(type_name)
            if old is not None and old.cls is not cls and not _same_definition(old.cls, cls):
                raise ConfigurationError(
                    f"event type name {type_name!r} is already used by "
                    f"{old.cls.__module__}.{old.cls.__qualname__}; set __event_type__ "
                    "to give one of them another name"
                )
            if old is not None:
                self._by_class.pop(old.cls, None)
            self._by_name[type_name] = info
            self._by_class[cls] = info
            self.decoders.clear()
            self.generation += 1

    def alias(self, old_name: str, new_name: str) -> None:
        """Read events stored under ``old_name`` as type ``new_name`` (a renamed type).

        From then on a type filter naming either name (``read_all(types=...)``,
        subscriptions, projections, process managers) matches the events
        stored under both, as :meth:`stored_names` says. Renames may chain
        (``a`` -> ``b`` -> ``c``).
        """
        if not isinstance(old_name, str) or not isinstance(new_name, str):
            raise ConfigurationError("alias names must be str")
        if old_name == new_name or self._resolve(new_name, old_name) == old_name:
            raise ConfigurationError(f"alias {old_name!r} -> {new_name!r} would make a cycle")
        with self._lock:
            self._aliases[old_name] = new_name
            self.decoders.clear()
            self.generation += 1

    def _resolve(self, name: str, stop: str | None = None) -> str:
        """The name ``name`` is read as: its aliases followed to their end."""
        seen = {name}
        while name not in self._by_name and name != stop:
            target = self._aliases.get(name)
            if target is None or target in seen:
                break
            seen.add(target)
            name = target
        return name

    def stored_names(self, types: Sequence[str]) -> list[str]:
        """Every stored type name that reads as one of ``types``: the rule of type filters.

        A filter means the events that reading decodes as those types, so a
        renamed type's filter also matches the events stored under its old
        names (and a filter by an old name the events stored under the new).
        """
        wanted = {self._resolve(t) for t in types}
        names = dict.fromkeys(types)
        with self._lock:
            aliases = list(self._aliases)
        for name in (*aliases, *wanted):
            if self._resolve(name) in wanted:
                names[name] = None
        return list(names)

    def upcaster(self, type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator registering ``fn`` to lift ``type_name`` payloads from ``from_version``."""

        def decorate(fn: Upcaster) -> Upcaster:
            self._upcasters[(type_name, from_version)] = fn
            return fn

        return decorate

    def info_for_class(self, cls: type[Any]) -> _TypeInfo:
        """Return the registration of ``cls``, registering it now if needed."""
        info = self._by_class.get(cls)
        if info is None:
            self.register(cls)
            info = self._by_class[cls]
        return info

    def info_for_name(self, name: str, schema_version: int, stream: str | None) -> _TypeInfo:
        """Return the registration for a stored type name (following aliases)."""
        info = self._by_name.get(name)
        if info is None:
            info = self._by_name.get(self._resolve(name))
            if info is None:
                raise UnknownEventType(name, schema_version, stream)
        return info

    def upcast(
        self, name: str, payload: dict[str, Any], version: int, target: int, stream: str | None
    ) -> dict[str, Any]:
        """Apply upcasters to ``payload`` from ``version`` up to ``target``."""
        while version < target:
            fn = self._upcasters.get((name, version))
            if fn is None:
                raise SerializationError(
                    f"no upcaster for event type {name!r} from schema version {version} "
                    f"to {target}" + (f" in stream {stream!r}" if stream else "")
                )
            try:
                payload = fn(payload)
            except Exception as exc:
                where = f" in stream {stream!r}" if stream else ""
                raise SerializationError(
                    f"upcaster of event type {name!r} from schema version {version}{where} "
                    f"raised {type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(payload, dict):
                raise SerializationError(
                    f"upcaster of event type {name!r} from schema version {version} returned "
                    f"{type(payload).__name__}, not a dict"
                )
            version += 1
        return payload


def _same_definition(a: type[Any], b: type[Any]) -> bool:
    # A module reloaded (or a test module imported twice) defines a new class
    # object for the same event: treat it as the same type, newest wins.
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


#: The registry that :class:`~eventfold.Event` subclasses join on definition.
default_registry = TypeRegistry()


def event_type(name: str | None = None, *, version: int = 1) -> Callable[[T], T]:
    """Class decorator registering a dataclass (or Struct) as an event type."""

    def decorate(cls: T) -> T:
        default_registry.register(cls, name=name, version=version)
        return cls

    return decorate


class Serializer:
    """Turns event objects into (type name, schema version, JSON bytes) and back.

    ``on_unknown="error"`` (default) raises :class:`~eventfold.UnknownEventType`
    for a stored type with no class; ``"raw"`` returns the payload as a dict,
    which tools that browse foreign stores need.
    """

    def __init__(
        self,
        registry: TypeRegistry | None = None,
        *,
        on_unknown: Literal["error", "raw"] = "error",
    ) -> None:
        if on_unknown not in ("error", "raw"):
            raise ConfigurationError(f'on_unknown must be "error" or "raw", not {on_unknown!r}')
        self.registry = registry or default_registry
        self.on_unknown = on_unknown

    def encode(self, event: object) -> tuple[str, int, bytes]:
        """Encode an event object; raise InvalidEvent if it would not read back as written.

        The JSON is decoded again with the type's own decoder, the one
        readers use, and compared with ``event``: a field not of its declared
        type, a NaN or infinite float, a non-str key, a value that would come
        back as another type are refused here, before anything is stored.
        """
        cls = type(event)
        info = self.registry._by_class.get(cls)
        if info is None:
            try:
                info = self.registry.info_for_class(cls)
            except ConfigurationError as exc:
                raise InvalidEvent(cls.__qualname__, "", str(exc)) from exc
        try:
            data = info.encode(event)
        except _ENCODE_ERRORS as exc:  # pydantic's serialization errors are ValueErrors
            raise InvalidEvent(info.name, locate_encode_error(event), _encode_problem(exc)) from exc
        decode = info.decoder
        try:
            restored = decode(data)
        except msgspec.ValidationError as exc:
            raise InvalidEvent(info.name, *split_validation_error(str(exc))) from exc
        except RecursionError as exc:
            raise InvalidEvent(info.name, "", _encode_problem(exc)) from exc
        if restored != event:
            field, problem = first_difference(event, restored)
            if problem:
                raise InvalidEvent(info.name, field, problem)
        return info.name, info.version, data

    def decode(
        self,
        name: str,
        schema_version: int,
        data: bytes,
        stream: str | None = None,
        version: int | None = None,
        position: int | None = None,
    ) -> Any:
        """Decode stored bytes to an instance of the registered class.

        Raises SerializationError (UnknownEventType for a type no class
        matches) for data that cannot be decoded, upcasted or converted,
        naming the stored event when ``stream``, ``version`` and ``position``
        are given.
        """
        fast = self.registry.decoders.get((name, schema_version))
        if fast is not None:
            try:
                return fast(data)
            except (msgspec.DecodeError, RecursionError):
                pass  # the slow path below raises the descriptive error
        try:
            return self._decode(name, schema_version, data, stream)
        except SerializationError as exc:
            if stream is not None and version is not None and position is not None:
                exc.locate(stream, version, position)
            raise

    def _decode(self, name: str, schema_version: int, data: bytes, stream: str | None) -> Any:
        try:
            info = self.registry.info_for_name(name, schema_version, stream)
        except UnknownEventType:
            if self.on_unknown == "raw":
                return _decode_json(data, f"stored {name} event")
            raise
        try:
            if schema_version == info.version and info.name == name:
                decode = info.decoder
                self.registry.decoders[(name, schema_version)] = decode
                return decode(data)
            payload = _decode_json(data, f"stored {name} event")
            if not isinstance(payload, dict):
                raise SerializationError(
                    f"stored {name} event (schema version {schema_version}) is not a JSON "
                    f"object but {type(payload).__name__}"
                )
            payload = self.registry.upcast(name, payload, schema_version, info.version, stream)
            return info.convert(payload)
        except msgspec.ValidationError as exc:
            raise SerializationError(
                f"stored {name} event (schema version {schema_version}) "
                f"does not match {info.cls.__qualname__}: {exc}"
            ) from exc
        except msgspec.DecodeError as exc:
            raise SerializationError(f"stored {name} event is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            raise SerializationError(f"stored {name} event is nested too deeply to decode") from exc

    @staticmethod
    def encode_metadata(metadata: object, event_type: str | None = None) -> bytes | None:
        """Encode metadata; empty metadata is stored as NULL.

        Metadata must be a mapping with str keys whose values read back as
        written (the rule of :meth:`encode`). A violation raises InvalidEvent
        naming ``event_type``, or InvalidRequest for a stream's metadata
        (``event_type`` None).
        """
        if not isinstance(metadata, Mapping):
            _refuse_metadata(
                event_type,
                "",
                f"metadata must be a mapping with str keys, not {type(metadata).__name__}",
            )
        if not metadata:
            return None
        try:
            data = _JSON_ENCODER.encode(metadata)
        except _ENCODE_ERRORS as exc:
            _refuse_metadata(event_type, locate_encode_error(metadata), _encode_problem(exc))
        try:
            restored = _META_DECODER.decode(data)
        except RecursionError as exc:
            _refuse_metadata(event_type, "", _encode_problem(exc))
        if restored != metadata:
            field, problem = first_difference(metadata, restored)
            if problem:
                _refuse_metadata(event_type, field, problem)
        return data

    @staticmethod
    def decode_metadata(data: bytes | None) -> Mapping[str, Any]:
        """Decode stored metadata (NULL becomes an empty mapping)."""
        if data is None:
            return EMPTY_METADATA
        try:
            return _META_DECODER.decode(data)
        except msgspec.DecodeError as exc:
            raise SerializationError(f"stored event metadata is not a JSON object: {exc}") from exc
        except RecursionError as exc:
            raise SerializationError("stored event metadata is nested too deeply") from exc


_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError)


def _encode_problem(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return (
            "nested too deeply to store and read back (JSON depth beyond Python's recursion limit)"
        )
    return f"cannot be encoded as JSON: {exc}"


def _decode_json(data: bytes, what: str) -> Any:
    try:
        return _JSON_DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise SerializationError(f"{what} is not valid JSON: {exc}") from exc


def _refuse_metadata(event_type: str | None, field: str, problem: str) -> NoReturn:
    place = "metadata" if not field else f"metadata{'' if field.startswith('[') else '.'}{field}"
    if event_type is None:
        raise InvalidRequest(f"stream {place}: {problem}")
    raise InvalidEvent(event_type, place, problem)
