"""Concurrency conformance for sync stores: many threads, one tailing reader.

Subclass :class:`EventStoreConcurrencySuite` and provide a ``store`` fixture
(the same one the main suite uses). Counts are bounded so the suite runs in
seconds; ``WRITERS`` and ``APPENDS`` may be raised in a subclass for soaks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import ClassVar
from uuid import UUID

from eventfold.errors import WrongExpectedVersion
from eventfold.events import NewEvent, RecordedEvent
from eventfold.store import EventStore
from eventfold.testing._events import Deposited

__all__ = ["EventStoreConcurrencySuite", "follow_log", "run_threads"]


def run_threads(targets: list[Callable[[], None]]) -> None:
    """Start one thread per target, wait for all, re-raise the first failure."""
    errors: list[BaseException] = []

    def guard(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [threading.Thread(target=guard(t)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def follow_log(
    store: EventStore,
    finished: Callable[[], bool],
    *,
    limit: int = 7,
    idle: Callable[[], object] | None = None,
) -> list[RecordedEvent]:
    """Tail ``read_all`` from position 0 in pages of ``limit`` until writers are done.

    Asserts that no event ever appears behind a position already passed, and
    returns every event seen, in the order seen. ``finished()`` says whether
    the writers are done; ``idle()`` runs after an empty page while they are not.
    """
    seen: list[RecordedEvent] = []
    cursor = 0
    while True:
        # Ask before reading: an empty page read after the writers finished
        # proves the reader has caught up with every commit.
        done = finished()
        page = list(store.read_all(after=cursor, limit=limit))
        for event in page:
            assert event.position > cursor, "an event appeared behind the cursor"
            cursor = event.position
        seen.extend(page)
        if not page:
            if done:
                return seen
            if idle is not None:
                idle()


class EventStoreConcurrencySuite:
    """Concurrent writers and tailing readers on one sync store."""

    WRITERS: ClassVar[int] = 6
    APPENDS: ClassVar[int] = 60

    def test_threads_racing_on_one_stream(self, store: EventStore) -> None:
        store.append("hot", [Deposited(amount=0)])
        conflicts: list[int] = []
        per_writer = self.APPENDS // 3

        def writer(n: int) -> Callable[[], None]:
            def run() -> None:
                lost = 0
                for _ in range(per_writer):
                    while True:
                        (last,) = store.read("hot", backwards=True, limit=1)
                        try:
                            store.append("hot", [Deposited(amount=n)], expected=last.version)
                            break
                        except WrongExpectedVersion as exc:
                            assert exc.actual > last.version
                            lost += 1
                conflicts.append(lost)

            return run

        run_threads([writer(n) for n in range(1, self.WRITERS + 1)])
        events = list(store.read("hot"))
        total = 1 + self.WRITERS * per_writer
        assert [e.version for e in events] == list(range(1, total + 1))
        assert len({e.id for e in events}) == total
        amounts = sorted(e.data.amount for e in events[1:])
        assert amounts == sorted(n for n in range(1, self.WRITERS + 1) for _ in range(per_writer))
        assert len(conflicts) == self.WRITERS

    def test_tailing_reader_sees_every_event_once_in_one_order(self, store: EventStore) -> None:
        written: list[UUID] = []
        written_lock = threading.Lock()
        writers_done = threading.Event()
        seen: list[RecordedEvent] = []

        def writer(w: int) -> Callable[[], None]:
            def run() -> None:
                for i in range(self.APPENDS):
                    batch = [NewEvent(data=Deposited(amount=i)) for _ in range(1 + i % 3)]
                    stream = "hot-shared" if i % 10 == 0 else f"w{w}-{i % 4}"
                    store.append(stream, batch)
                    with written_lock:
                        written.extend(e.id for e in batch)

            return run

        def reader() -> None:
            seen.extend(
                follow_log(store, writers_done.is_set, idle=lambda: writers_done.wait(0.001))
            )

        def writers() -> None:
            try:
                run_threads([writer(w) for w in range(self.WRITERS)])
            finally:
                writers_done.set()

        run_threads([writers, reader])
        ids = [e.id for e in seen]
        assert len(ids) == len(set(ids)), "an event was delivered twice"
        assert set(ids) == set(written), "the reader missed events"
        assert list(store.read_all()) == seen, "the log order changed after the reader passed"
        versions: dict[str, list[int]] = {}
        for event in seen:
            versions.setdefault(event.stream, []).append(event.version)
        for stream, stream_versions in versions.items():
            assert stream_versions == list(range(1, len(stream_versions) + 1)), stream
