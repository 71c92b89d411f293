"""Where this process's runners have moved their checkpoints: waits need no database.

A runner that holds a projection's lease is the only one that can move its
checkpoint (every advance is fenced by the lease), so while it holds it, its
own word after each commit is the whole truth: a ``wait_for`` in the same
process waits on that word instead of a round trip and a notification. When
the lease runs out or is given up, waiters go back to the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

__all__ = ["LocalPositions"]

_Watcher = tuple[asyncio.AbstractEventLoop, asyncio.Event]


class LocalPositions:
    """Checkpoints moved by runners of this process, while their leases last."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        # name -> (owner, committed position, monotonic end of the lease)
        self._held: dict[str, tuple[str, int, float]] = {}
        self._watchers: set[_Watcher] = set()

    def moved(self, name: str, owner: str, position: int, lease_until: float) -> None:
        """``owner`` committed checkpoint ``name`` at ``position``; its lease lasts until then."""
        with self._changed:
            self._held[name] = (owner, position, lease_until)
        self._notify()

    def let_go(self, name: str, owner: str) -> None:
        """``owner`` no longer holds the lease of ``name``: waiters look in the database."""
        with self._changed:
            entry = self._held.get(name)
            if entry is not None and entry[0] == owner:
                del self._held[name]
        self._notify()

    def _notify(self) -> None:
        """Wake every wait, threads and tasks, to look again."""
        with self._changed:
            self._changed.notify_all()
            watchers = list(self._watchers)
        for loop, event in watchers:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there
                loop.call_soon_threadsafe(event.set)

    def _look(self, name: str, position: int) -> tuple[int | None, float]:
        """(the position if passed, else None; until when to wait: 0 for not at all)."""
        entry = self._held.get(name)
        if entry is None or time.monotonic() >= entry[2]:
            return None, 0.0
        if entry[1] >= position:
            return entry[1], 0.0
        return None, entry[2]

    def wait(self, name: str, position: int, timeout: float) -> int | None:
        """Block until the local holder of ``name`` has passed ``position``: its position;
        None at once without a local holder, or when it lets go or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found, until = self._look(name, position)
                remaining = min(deadline, until) - time.monotonic()
                if found is not None or remaining <= 0:
                    return found
                self._changed.wait(remaining)

    async def async_wait(self, name: str, position: int, timeout: float) -> int | None:
        """:meth:`wait` for a task (the runner may be in another thread or loop)."""
        deadline = time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        while True:
            event = asyncio.Event()
            watcher = (loop, event)
            with self._changed:
                found, until = self._look(name, position)
                remaining = min(deadline, until) - time.monotonic()
                if found is not None or remaining <= 0:
                    return found
                self._watchers.add(watcher)
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await event.wait()
            finally:
                with self._changed:
                    self._watchers.discard(watcher)
