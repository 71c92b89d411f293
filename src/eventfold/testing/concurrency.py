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
from eventfold.store import ANY, EventStore, StreamAppend
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


def _whole_calls(events: list[RecordedEvent]) -> dict[int, list[RecordedEvent]]:
    """The events of each multi-stream call of the suite, checked to be whole and together.

    A call writes two ``Deposited(amount=call)`` to each of its streams: three
    streams for an odd ``call``, two for an even one (amount 0 is no call).
    """
    by_call: dict[int, list[RecordedEvent]] = {}
    for event in events:
        if event.data.amount:
            by_call.setdefault(event.data.amount, []).append(event)
    index = {event.position: i for i, event in enumerate(events)}
    for call, seen in by_call.items():
        count = 2 + call % 2
        assert len(seen) == 2 * count, f"call {call} is stored in part"
        assert len({event.stream for event in seen}) == count, f"call {call} is stored in part"
        first = index[seen[0].position]
        assert events[first : first + len(seen)] == seen, f"call {call} is split in the log"
    return by_call


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

    def test_threads_racing_append_many_on_overlapping_streams(self, store: EventStore) -> None:
        """Multi-stream appends that overlap, in both orders: each is applied whole or not
        at all, and a reader of the log never sees one in part."""
        streams = [f"multi-{i}" for i in range(4)]
        for stream in streams:
            store.append(stream, [Deposited(amount=0)])
        applied: list[int] = []
        applied_lock = threading.Lock()
        writers_done = threading.Event()
        calls = max(self.APPENDS // 4, 1)

        def writer(w: int) -> Callable[[], None]:
            def run() -> None:
                for i in range(calls):
                    call = (w + 1) * 10_000 + i * 2 + (i + w) % 2  # odd: three streams
                    count = 2 + call % 2
                    start = (w + i) % len(streams)
                    chosen = [streams[(start + k) % len(streams)] for k in range(count)]
                    if w % 2:
                        chosen.reverse()
                    appends = []
                    for stream in chosen:
                        info = store.get_stream(stream)
                        expected = info.version if info is not None and i % 3 else ANY
                        events = [NewEvent(data=Deposited(amount=call)) for _ in range(2)]
                        appends.append(StreamAppend(stream, events, expected=expected))
                    try:
                        results = store.append_many(appends)
                    except WrongExpectedVersion as exc:
                        assert exc.stream in chosen
                        continue
                    assert [r.stream for r in results] == chosen
                    with applied_lock:
                        applied.append(call)

            return run

        def reader() -> None:
            while not writers_done.is_set():
                _whole_calls(list(store.read_all()))
                writers_done.wait(0.002)

        def writers() -> None:
            try:
                run_threads([writer(w) for w in range(self.WRITERS)])
            finally:
                writers_done.set()

        run_threads([writers, reader])
        # Read stream by stream: read_all may lag behind the last commits (on
        # PostgreSQL, while an older transaction of the server still runs).
        every = sorted((e for s in streams for e in store.read(s)), key=lambda e: e.position)
        assert sorted(_whole_calls(every)) == sorted(applied)
        assert applied, "no call succeeded"
        for stream in streams:
            versions = [e.version for e in every if e.stream == stream]
            assert versions == list(range(1, len(versions) + 1)), stream

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
