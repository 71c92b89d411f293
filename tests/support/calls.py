"""A call counter for tests that prove something does *not* happen often."""

from __future__ import annotations

from typing import Any


def count_calls(owner: Any, method: str) -> list[int]:
    """Wrap ``owner.method`` to count its calls: the list gains one item per call."""
    calls: list[int] = []
    original = getattr(owner, method)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    setattr(owner, method, counting)
    return calls
