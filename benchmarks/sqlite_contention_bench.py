"""SQLite contention benchmark: appends from other writers while a SQL projection catches up.

Run with ``python -m benchmarks sqlite-contention [--quick] [--json PATH] [--durability ...]``.
A SQL projection (read model in the store's own file) catches up a backlog of
20,000 events while a writer thread with a store object of its own and a writer
process append one event at a time. Printed: the append latency of each writer
(p50, p99, max) and how many appends got through during the catch-up, beside
the same writers' latency on a quiet file and the catch-up rate without
writers, all from the same run. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import sqlite3
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import eventfold
from benchmarks._harness import percentile, system_info, write_json
from eventfold import Event, SqliteEventStore
from eventfold.errors import StoreTimeout
from eventfold.projections import Projection, ProjectionContext, ProjectionRunner

WORKER_TIMEOUT_S = 120.0  # a helper process that says nothing for this long has failed
SETUP_CHUNK = 40  # events per stream per append while writing the backlog (streams interleave)


class Opened(Event, frozen=True):
    __event_type__ = "contention.Opened"


class Deposited(Event, frozen=True):
    __event_type__ = "contention.Deposited"
    amount: int


@dataclass(frozen=True)
class Counts:
    backlog: int  # events the projection catches up
    streams: int  # the backlog's streams
    quiet_appends: int  # per writer, on a quiet file (the reference)


FULL_COUNTS = Counts(backlog=20_000, streams=500, quiet_appends=300)
QUICK_COUNTS = Counts(backlog=5_000, streams=125, quiet_appends=100)


# -- the read model ---------------------------------------------------------------------------

UPSERT = (
    "INSERT INTO contention_balances (account, balance) VALUES (?, ?) ON CONFLICT (account) "
    "DO UPDATE SET balance = contention_balances.balance + excluded.balance"
)


def setup(ctx: ProjectionContext) -> None:
    """The read model, empty: each catch-up of the run starts it afresh."""
    ctx.execute(
        "CREATE TABLE IF NOT EXISTS contention_balances (account TEXT PRIMARY KEY, balance BIGINT)"
    )
    ctx.execute("DELETE FROM contention_balances")


def balances_handler(reached: int, on_reached: Callable[[], None], work: float) -> Any:
    """The projection's handler: ``work`` seconds of Python computing (holding the GIL,
    as a handler's own code does), then an upsert; ``on_reached()`` at ``reached``."""
    clock = time.perf_counter

    def handle(ctx: ProjectionContext, event: Any) -> None:
        until = clock() + work
        while clock() < until:
            pass
        data = event.data
        ctx.execute(UPSERT, (event.stream, data.amount if type(data) is Deposited else 0))
        if event.position == reached:
            on_reached()

    return handle


# -- the writers ------------------------------------------------------------------------------


Span = tuple[int, int]  # (start ns, end ns) of one append call, on CLOCK_MONOTONIC


@dataclass
class Appends:
    """What one writer did: its acknowledged appends and those that raised StoreTimeout."""

    writer: str
    times: list[Span] = field(default_factory=list)
    timed_out: list[Span] = field(default_factory=list)
    other_errors: list[str] = field(default_factory=list)

    @property
    def timeouts(self) -> int:
        return len(self.timed_out)

    def during(self, start_ns: int, end_ns: int) -> Appends:
        """The append calls that started within [start_ns, end_ns]."""

        def pick(spans: list[Span]) -> list[Span]:
            return [t for t in spans if start_ns <= t[0] <= end_ns]

        return Appends(self.writer, pick(self.times), pick(self.timed_out), self.other_errors)

    def latencies_ms(self) -> list[float]:
        """Every call's time, sorted; a timed-out call counts with the time it waited."""
        return sorted((end - start) / 1e6 for start, end in [*self.times, *self.timed_out])


def append_loop(
    store: SqliteEventStore,
    stream: str,
    pause: float,
    go: Any,
    stop: Any,
    out: Appends,
    limit: int | None = None,
) -> None:
    """Append one event at a time to ``stream`` (its own), ``pause`` s apart, from ``go``
    until ``stop`` is set (or ``limit`` appends)."""
    clock = time.monotonic_ns
    info = store.get_stream(stream)
    version = info.version if info is not None else 0
    go.wait()
    while not stop.is_set() and (limit is None or len(out.times) < limit):
        started = clock()
        try:
            version = store.append(stream, [Deposited(amount=1)], expected=version).to_version
        except StoreTimeout:
            out.timed_out.append((started, clock()))
            continue
        except Exception as exc:  # reported, not hidden
            out.other_errors.append(repr(exc))
            return
        out.times.append((started, clock()))
        time.sleep(pause)  # the writer's think time between appends, not synchronisation


def writer_process(path: str, durability: str, pause: float, pipe: Any, go: Any, stop: Any) -> None:
    """A writer in another process, with its own store: one round of appends per
    message ("again"), from ``go`` until ``stop``; sends what it did after each."""
    try:
        with SqliteEventStore(path, durability=durability) as store:  # type: ignore[arg-type]
            store.append("writer-process", [Opened()])  # warm: the file is open
            pipe.send("ready")
            message: str | None = "again"
            while message is not None:
                out = Appends("process")
                append_loop(store, "writer-process", pause, go, stop, out)
                pipe.send((out.times, out.timed_out, out.other_errors))
                message = pipe.recv()
    except BaseException:
        with suppress(OSError):
            pipe.send(("error", traceback.format_exc()))
        raise


class ProcessWriter:
    """The writer process and the pipe and events that drive it, one round at a time."""

    def __init__(self, path: str, durability: str, pause: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.go, self.stop = ctx.Event(), ctx.Event()
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=writer_process,
            args=(path, durability, pause, child, self.go, self.stop),
            name="contention-writer",
            daemon=True,
        )
        self.proc.start()
        child.close()
        self._expect()

    def _expect(self) -> Any:
        if not self.pipe.poll(WORKER_TIMEOUT_S):
            raise RuntimeError(f"the writer process sent nothing for {WORKER_TIMEOUT_S:.0f} s")
        message = self.pipe.recv()
        if isinstance(message, tuple) and message and message[0] == "error":
            raise RuntimeError(f"the writer process failed:\n{message[1]}")
        return message

    def collect(self) -> Appends:
        """After ``stop`` was set: the round's appends; the process waits for the next round."""
        times, timed_out, errors = self._expect()
        return Appends(
            "process", [(a, b) for a, b in times], [(a, b) for a, b in timed_out], errors
        )

    def next_round(self) -> None:
        self.go.clear()
        self.stop.clear()
        self.pipe.send("again")

    def close(self) -> None:
        self.stop.set()
        self.go.set()
        with suppress(OSError):
            self.pipe.send(None)
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.pipe.close()


# -- one durability ---------------------------------------------------------------------------


@dataclass
class Result:
    durability: str
    backlog: int
    quiet: dict[str, Appends]
    during: dict[str, Appends]
    alone_s: float  # catch-up without writers
    contended_s: float  # catch-up until the backlog's last event, writers appending

    def as_dict(self) -> dict[str, Any]:
        def stats(a: Appends) -> dict[str, Any]:
            lat = a.latencies_ms()
            return {
                "appends": len(lat),
                "timeouts": a.timeouts,
                "p50_ms": round(percentile(lat, 50), 3),
                "p99_ms": round(percentile(lat, 99), 3),
                "max_ms": round(lat[-1], 3) if lat else None,
            }

        return {
            "scenario": f"appends during a {self.backlog:,}-event SQL catch-up",
            "durability": self.durability,
            "quiet": {w: stats(a) for w, a in self.quiet.items()},
            "during_catch_up": {w: stats(a) for w, a in self.during.items()},
            "catch_up_alone_events_per_s": round(self.backlog / self.alone_s, 1),
            "catch_up_with_writers_events_per_s": round(self.backlog / self.contended_s, 1),
        }


def write_backlog(store: SqliteEventStore, counts: Counts) -> None:
    per_stream = counts.backlog // counts.streams
    for first in range(1, per_stream + 1, SETUP_CHUNK):
        last = min(first + SETUP_CHUNK, per_stream + 1)
        for s in range(counts.streams):
            store.append(
                f"acc-{s}",
                [Opened() if v == 1 else Deposited(amount=v) for v in range(first, last)],
                expected=first - 1,
            )


def run_durability(
    durability: str, counts: Counts, pause: float, work: float, directory: Path
) -> Result:
    path = str(directory / f"contention-{durability}.db")
    with ExitStack() as stack:
        runner_store = stack.enter_context(SqliteEventStore(path, durability=durability))  # type: ignore[arg-type]
        write_backlog(runner_store, counts)
        head = runner_store.last_position()
        if head != counts.backlog:
            raise RuntimeError(f"the backlog has {head} events, not {counts.backlog}")
        thread_store = stack.enter_context(SqliteEventStore(path, durability=durability))  # type: ignore[arg-type]
        thread_store.append("writer-thread", [Opened()])
        proc = ProcessWriter(path, durability, pause)
        stack.callback(proc.close)

        def thread_round(
            out: Appends, go: Any, stop: Any, limit: int | None = None
        ) -> threading.Thread:
            thread = threading.Thread(
                target=append_loop,
                args=(thread_store, "writer-thread", pause, go, stop, out, limit),
                name="writer-thread",
            )
            thread.start()
            return thread

        # 1. The reference: the writers alone on a quiet file.
        go, stop = proc.go, proc.stop
        quiet_thread = Appends("thread (other store)")
        thread = thread_round(quiet_thread, go, stop, counts.quiet_appends)
        go.set()
        thread.join()
        # The process writes as many appends as the thread, then stops.
        deadline = time.monotonic() + WORKER_TIMEOUT_S
        while runner_store.get_stream("writer-process").version <= counts.quiet_appends:  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise RuntimeError("the writer process does not append")
            time.sleep(0.01)  # polling the store's state with a deadline
        stop.set()
        quiet_process = proc.collect()
        quiet = {quiet_thread.writer: quiet_thread, "process": quiet_process}

        # 2. The reference: the catch-up alone.
        alone_s = catch_up(runner_store, f"alone-{durability}", head, work, lambda: None)[2]

        # 3. The catch-up with both writers appending.
        proc.next_round()
        go, stop = proc.go, proc.stop
        during_thread = Appends("thread (other store)")
        thread = thread_round(during_thread, go, stop)
        marks: dict[str, int] = {}

        def reached() -> None:
            marks["reached"] = time.monotonic_ns()
            stop.set()

        def started() -> None:
            go.set()
            marks["start"] = time.monotonic_ns()

        runner, handled, _ = catch_up(
            runner_store, f"contended-{durability}", head, work, reached, started
        )
        stop.set()
        thread.join()
        during_process = proc.collect()
        handled += runner.run_once()  # what the writers appended after the run ended
        window = (marks["start"], marks["reached"])
        during = {
            during_thread.writer: during_thread.during(*window),
            "process": during_process.during(*window),
        }
        for appends in (*quiet.values(), during_thread, during_process):
            if appends.other_errors:
                raise RuntimeError(f"{appends.writer}: {appends.other_errors[0]}")
        check_store(runner_store, head, quiet_thread, quiet_process, during_thread, during_process)
        check_read_model(runner_store, handled)
        return Result(
            durability,
            head,
            quiet,
            during,
            alone_s,
            (window[1] - window[0]) / 1e9,
        )


def catch_up(
    store: SqliteEventStore,
    name: str,
    head: int,
    work: float,
    on_reached: Callable[[], None],
    on_start: Callable[[], None] = lambda: None,
) -> tuple[ProjectionRunner, int, float]:
    """A fresh projection catches up the whole log: (runner, events handled, seconds
    to ``head``)."""
    marks: dict[str, float] = {}

    def reached() -> None:
        marks["reached"] = time.perf_counter()
        on_reached()

    projection = Projection(name, balances_handler(head, reached, work), setup=setup)
    runner = ProjectionRunner(store, projection)
    gc.collect()
    on_start()
    start = time.perf_counter()
    handled = runner.run_once()
    if "reached" not in marks:
        raise RuntimeError(f"{name}: the catch-up never handled position {head}")
    return runner, handled, marks["reached"] - start


def check_store(store: SqliteEventStore, head: int, *writers: Appends) -> None:
    """Every acknowledged append is stored exactly once, in its writer's stream, in order."""
    thread_appends = sum(len(a.times) for a in writers if a.writer.startswith("thread"))
    process_appends = sum(len(a.times) for a in writers if a.writer == "process")
    for stream, appends in (("writer-thread", thread_appends), ("writer-process", process_appends)):
        versions = [e.version for e in store.read(stream)]
        # Version 1 is the warm-up "opened" event; the process's rounds each end
        # with the append it was doing when stopped, all acknowledged.
        if versions != list(range(1, appends + 2)):
            raise RuntimeError(
                f"{stream}: {len(versions)} events stored, {appends + 1} acknowledged"
            )
    if store.last_position() != head + thread_appends + process_appends + 2:
        raise RuntimeError("the log holds events no writer acknowledged")


def check_read_model(store: SqliteEventStore, handled: int) -> None:
    """The projection handled every event once: its balances are the log's."""
    if handled != store.last_position():
        raise RuntimeError(f"the catch-up handled {handled} events, not {store.last_position()}")
    expected: dict[str, int] = {}
    for event in store.read_all():
        data = event.data
        expected[event.stream] = expected.get(event.stream, 0) + (
            data.amount if type(data) is Deposited else 0
        )
    conn = sqlite3.connect(store.path)
    try:
        found = dict(conn.execute("SELECT account, balance FROM contention_balances"))
    finally:
        conn.close()
    if found != expected:
        raise RuntimeError("the read model differs from the log")


# -- command line ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a 5,000-event backlog (a smoke run)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument(
        "--durability",
        choices=("normal", "full", "both"),
        default="both",
        help="the stores' durability (PRAGMA synchronous); default: both, one after the other",
    )
    parser.add_argument(
        "--pause-ms",
        type=float,
        default=2.0,
        help="each writer's pause between two appends (default 2 ms)",
    )
    parser.add_argument(
        "--handler-us",
        type=float,
        default=200.0,
        help="the handler's own computing per event, before its upsert (default 200 us)",
    )


def _fmt(value: float) -> str:
    return "-" if value != value else f"{value:,.1f} ms"  # NaN: no appends


def print_result(result: Result) -> None:
    print(
        f"\n== appends during a {result.backlog:,}-event SQL catch-up  "
        f"[durability={result.durability}]"
    )
    header = f"{'writer':<24}{'phase':<18}{'appends':>8}{'timeouts':>10}{'p50':>11}{'p99':>11}{'max':>11}"
    print(header)
    print("-" * len(header))
    for phase, group in (("quiet file", result.quiet), ("during catch-up", result.during)):
        for writer, appends in group.items():
            lat = appends.latencies_ms()
            print(
                f"{writer:<24}{phase:<18}{len(lat):>8}{appends.timeouts:>10}"
                f"{_fmt(percentile(lat, 50)):>11}{_fmt(percentile(lat, 99)):>11}"
                f"{_fmt(lat[-1] if lat else float('nan')):>11}"
            )
    alone = result.backlog / result.alone_s
    contended = result.backlog / result.contended_s
    print(
        f"catch-up: alone {alone:,.0f} events/s ({result.alone_s:.2f} s); with both writers "
        f"{contended:,.0f} events/s ({result.contended_s:.2f} s), {contended / alone:.2f}x"
    )
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    counts = QUICK_COUNTS if args.quick else FULL_COUNTS
    durabilities = ["normal", "full"] if args.durability == "both" else [args.durability]
    pause, work = args.pause_ms / 1000, args.handler_us / 1e6
    info = system_info(
        eventfold=eventfold.__version__, quick=bool(args.quick), pause_s=pause, handler_s=work
    )
    print(
        f"eventfold {info['eventfold']} | SQLite {info['sqlite']} | Python {info['python']} | "
        f"{info['cpus']} CPUs | backlog {counts.backlog:,} events, batch_size 500, "
        f"handler {args.handler_us:g} us + an upsert per event, "
        f"writers pause {args.pause_ms:g} ms between appends"
    )
    started = time.perf_counter()
    records = []
    with tempfile.TemporaryDirectory(prefix="eventfold-contention-") as directory:
        for durability in durabilities:
            result = run_durability(durability, counts, pause, work, Path(directory))
            print_result(result)
            records.append(result.as_dict())
    elapsed = time.perf_counter() - started
    print(f"\ntotal {elapsed:.1f} s")
    if args.json:
        write_json(
            args.json, {"system": info, "elapsed_s": round(elapsed, 2), "scenarios": records}
        )
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks sqlite-contention", description=__doc__
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
