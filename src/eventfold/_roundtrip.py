"""The rule that decides whether a value reads back as it was written.

Events and metadata are stored as JSON and decoded again by readers. JSON
cannot carry everything Python can: a NaN or infinite float becomes
``null``, a non-str mapping key becomes a string, bytes in an untyped field
come back as base64 text, a tuple as a list, a datetime as a string; and a
value not of its field's declared type is stored but cannot be decoded at
all. The write path therefore decodes what it encoded, the way readers will,
and compares: :func:`first_difference` finds the first place where the value
read back differs from the value written, and :func:`locate_encode_error`
the first place that cannot be encoded at all. Both run only when the cheap
check (decode, then ``==``) has already failed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = [
    "first_difference",
    "is_pydantic_model",
    "join_path",
    "locate_encode_error",
    "split_validation_error",
]

_ENCODER = msgspec.json.Encoder()
# msgspec ends a validation message with the path of the offending value.
_AT_PATH = re.compile(r"^(?P<problem>.*?) - at `\$(?P<path>[^`]*)`$", re.DOTALL)
# A walk this deep gives up naming the place (the value is nested absurdly deep).
_MAX_DEPTH = 64
_REPR_LIMIT = 60


def join_path(path: str, part: str | int) -> str:
    """``lines`` + 2 -> ``lines[2]``; ``lines[2]`` + ``price`` -> ``lines[2].price``."""
    if isinstance(part, int):
        return f"{path}[{part}]"
    if not part.isidentifier():
        return f"{path}[{part!r}]"
    return f"{path}.{part}" if path else part


def split_validation_error(message: str, prefix: str = "") -> tuple[str, str]:
    """(field, problem) of a msgspec validation message, the field under ``prefix``."""
    match = _AT_PATH.match(message)
    if match is None:
        return prefix, message
    path = match["path"]
    if path.startswith("."):
        path = path[1:]
    if prefix and path:
        path = f"{prefix}{'' if path.startswith('[') else '.'}{path}"
    return path or prefix, match["problem"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def _fields(value: Any) -> list[str] | None:
    """The field names of a struct, dataclass or pydantic model instance (else None)."""
    if isinstance(value, msgspec.Struct):
        return list(value.__struct_fields__)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [f.name for f in dataclasses.fields(value)]
    if is_pydantic_model(type(value)):
        return list(type(value).model_fields)
    return None


def is_pydantic_model(cls: Any) -> bool:
    """Whether ``cls`` is a pydantic model class (never imports pydantic)."""
    pydantic = sys.modules.get("pydantic")
    base = getattr(pydantic, "BaseModel", None)
    return base is not None and isinstance(cls, type) and issubclass(cls, base)


def _float_problem(value: float) -> str | None:
    if math.isfinite(value):
        return None
    return (
        f"{value!r} is not a JSON number and would be stored as null: "
        "store it as a string or None, or leave the event out"
    )


def first_difference(written: Any, read: Any, path: str = "", depth: int = 0) -> tuple[str, str]:
    """The first place (path, problem) where ``read`` differs from ``written``.

    Returns ``("", "")`` when no difference is found (values whose ``==``
    is identity or custom count as equal then).
    """
    if isinstance(written, float):
        problem = _float_problem(written)
        if problem is not None:
            return path, problem
    if written is read or depth > _MAX_DEPTH:
        return "", ""
    names = _fields(written)
    if names is not None:
        if type(read) is not type(written):
            return path, f"{type(written).__name__} would read back as {type(read).__name__}"
        for name in names:
            found = first_difference(
                getattr(written, name), getattr(read, name), join_path(path, name), depth + 1
            )
            if found[1]:
                return found
        return "", ""
    if isinstance(written, Mapping):
        if not isinstance(read, Mapping):
            return path, f"a mapping would read back as {type(read).__name__}"
        for key in written:
            if not isinstance(key, str) and key not in read:
                return path, (
                    f"key {_short(key)} ({type(key).__name__}) would read back as a str: "
                    "use str keys"
                )
        if len(read) != len(written):
            return path, "keys that differ in type but not in text would collapse into one"
        for key, value in written.items():
            found = first_difference(value, read[key], join_path(path, str(key)), depth + 1)
            if found[1]:
                return found
        return "", ""
    if isinstance(written, (list, tuple)):
        if type(read) is not type(written) and not _equal(written, read):
            return path, (
                f"{type(written).__name__} would read back as {type(read).__name__}: "
                "declare the field's type or pass the type it reads back as"
            )
        if len(read) != len(written):
            return path, f"{len(written)} items would read back as {len(read)}"
        for index, (a, b) in enumerate(zip(written, read, strict=True)):
            found = first_difference(a, b, join_path(path, index), depth + 1)
            if found[1]:
                return found
        return "", ""
    if _equal(written, read):
        return "", ""
    if type(read) is not type(written):
        return path, (
            f"{type(written).__name__} {_short(written)} would read back as "
            f"{type(read).__name__} {_short(read)}: declare the field's type"
        )
    return path, f"{_short(written)} would read back as {_short(read)}"


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # a value whose == fails is not equal
        return False


def locate_encode_error(value: Any, path: str = "", depth: int = 0) -> str:
    """The path of the first part of ``value`` that cannot be encoded (``path`` if none)."""
    if depth > _MAX_DEPTH:
        return path
    names = _fields(value)
    if names is not None:
        children: list[tuple[str, Any]] = [(join_path(path, n), getattr(value, n)) for n in names]
    elif isinstance(value, Mapping):
        children = [(join_path(path, str(k)), v) for k, v in value.items()]
    elif isinstance(value, (list, tuple, set, frozenset)):
        children = [(join_path(path, i), v) for i, v in enumerate(value)]
    else:
        return path
    for child_path, child in children:
        try:
            _ENCODER.encode(child)
        except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError):
            return locate_encode_error(child, child_path, depth + 1)
    return path
