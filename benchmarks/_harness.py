"""Small shared helpers: timing ops, percentiles, table printing, JSON output.

A benchmark scenario hands :func:`run_rounds` one zero-argument callable per
contender (one call = one operation). Contenders run in interleaved rounds
with a rotating order, so that a noisy neighbour or CPU frequency drift hits
every contender alike instead of the one that happened to run last.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Measurement",
    "latency_ratios",
    "latency_record",
    "percentile",
    "print_latency_table",
    "print_table",
    "ratios",
    "record",
    "rotated",
    "run_rounds",
    "split",
    "system_info",
    "write_json",
]

Op = Callable[[], object]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of already sorted values, nearest-rank."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Measurement:
    """The timings of one contender in one scenario."""

    scenario: str
    durability: str
    contender: str
    events_per_op: int
    latencies_ns: list[int] = field(default_factory=list, repr=False)
    #: scenario-specific figures (e.g. conflict counts), copied into the JSON output
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ops(self) -> int:
        return len(self.latencies_ns)

    @property
    def events(self) -> int:
        return self.ops * self.events_per_op

    @property
    def seconds(self) -> float:
        return sum(self.latencies_ns) / 1e9

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else math.nan

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else math.nan

    def latency_us(self, q: float) -> float:
        return percentile(sorted(self.latencies_ns), q) / 1000

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "durability": self.durability,
            "contender": self.contender,
            "ops": self.ops,
            "events_per_op": self.events_per_op,
            "events": self.events,
            "seconds": round(self.seconds, 6),
            "ops_per_s": round(self.ops_per_s, 2),
            "events_per_s": round(self.events_per_s, 2),
            "p50_us": round(self.latency_us(50), 2),
            "p99_us": round(self.latency_us(99), 2),
            "mean_us": round(self.seconds / self.ops * 1e6, 2) if self.ops else None,
            **self.extra,
        }


def run_rounds(
    scenario: str,
    durability: str,
    events_per_op: int,
    ops: Mapping[str, Op],
    *,
    count: int,
    rounds: int = 3,
    warmup: int = 0,
) -> dict[str, Measurement]:
    """Time ``count`` calls of each contender's op, split into interleaved rounds.

    Each contender first runs ``warmup`` untimed calls. Every call is timed on
    its own with ``perf_counter_ns``; throughput is derived from the sum of
    those timings, so harness bookkeeping between calls is not counted.
    """
    names = list(ops)
    for name in names:
        op = ops[name]
        for _ in range(warmup):
            op()
    results = {name: Measurement(scenario, durability, name, events_per_op) for name in names}
    clock = time.perf_counter_ns
    for round_index, n in enumerate(split(count, rounds)):
        for name in rotated(names, round_index):
            op = ops[name]
            latencies = results[name].latencies_ns
            append = latencies.append
            for _ in range(n):
                start = clock()
                op()
                append(clock() - start)
    return results


def split(count: int, rounds: int) -> list[int]:
    """``count`` spread over ``rounds`` as evenly as possible, the larger shares first."""
    return [count // rounds + (1 if i < count % rounds else 0) for i in range(rounds)]


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """The contenders' order in a round: it rotates by one each round."""
    shift = round_index % len(names)
    return [*names[shift:], *names[:shift]]


def record(
    results: Mapping[str, Measurement], ratio_values: Mapping[str, float], **extra: Any
) -> dict[str, Any]:
    """The JSON record of a throughput scenario."""
    first = next(iter(results.values()))
    return {
        "scenario": first.scenario,
        "results": [m.as_dict() for m in results.values()],
        "ratios": {k: round(v, 3) for k, v in ratio_values.items()},
        **extra,
    }


def latency_ratios(
    results: Mapping[str, Measurement], subject: str, others: Sequence[str]
) -> dict[str, float]:
    """p50 and p99 latency of ``subject`` divided by each of ``others`` (<1: subject is faster)."""
    return {
        f"p{q} {subject}/{other}": results[subject].latency_us(q) / results[other].latency_us(q)
        for q in (50, 99)
        for other in others
    }


def latency_record(
    results: Mapping[str, Measurement], ratio_values: Mapping[str, float], *, mean: bool = False
) -> dict[str, Any]:
    """The JSON record of a latency scenario (``mean``: also the mean per contender)."""
    first = next(iter(results.values()))
    rows = []
    for m in results.values():
        row: dict[str, Any] = {"contender": m.contender, "samples": m.ops}
        row.update({f"p{q}_us": round(m.latency_us(q), 2) for q in (50, 90, 99, 100)})
        if mean:
            row["mean_us"] = round(m.seconds / m.ops * 1e6, 2) if m.ops else None
        rows.append(row)
    return {
        "scenario": first.scenario,
        "results": rows,
        "ratios": {k: round(v, 3) for k, v in ratio_values.items()},
    }


def ratios(
    results: Mapping[str, Measurement], subject: str, others: Sequence[str]
) -> dict[str, float]:
    """Throughput of ``subject`` divided by each of ``others`` (>1: subject is faster)."""
    mine = results[subject].events_per_s
    return {f"{subject}/{other}": mine / results[other].events_per_s for other in others}


def _fmt_rate(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def _fmt_us(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value >= 10_000:
        return f"{value / 1000:,.1f} ms"
    return f"{value:,.1f} us"


def _print_rows(
    title: str,
    results: Mapping[str, Measurement],
    columns: Sequence[tuple[str, Callable[[Measurement], str]]],
    ratio_label: str,
    ratio_values: Mapping[str, float],
    file: Any,
) -> None:
    out = file or sys.stdout
    width = max([15, *(len(m.contender) + 2 for m in results.values())])
    header = f"{'contender':<{width}}" + "".join(f"{name:>{w}}" for name, w, _ in _cols(columns))
    print(f"\n== {title}", file=out)
    print(header, file=out)
    print("-" * len(header), file=out)
    for m in results.values():
        cells = "".join(f"{cell(m):>{w}}" for _, w, cell in _cols(columns))
        print(f"{m.contender:<{width}}{cells}", file=out)
    if ratio_values:
        text = "   ".join(f"{name} = {value:.2f}x" for name, value in ratio_values.items())
        print(f"ratios ({ratio_label}): {text}", file=out)
    out.flush()


def _cols(
    columns: Sequence[tuple[str, Callable[[Measurement], str]]],
) -> list[tuple[str, int, Callable[[Measurement], str]]]:
    """Column widths: 8 for the count, 14 for events/s, 12 for ops/s, 13 for a time."""
    widths = {"ops": 8, "samples": 8, "events/s": 14, "ops/s": 12}
    return [(name, widths.get(name, 13), cell) for name, cell in columns]


def _latency_column(q: float) -> tuple[str, Callable[[Measurement], str]]:
    return ("max" if q == 100 else f"p{q:g}", lambda m: _fmt_us(m.latency_us(q)))


def print_table(
    title: str,
    results: Mapping[str, Measurement],
    ratio_values: Mapping[str, float],
    *,
    file: Any = None,
) -> None:
    """Print one scenario: a row per contender, then the throughput ratios."""
    columns = [
        ("ops", lambda m: str(m.ops)),
        ("events/s", lambda m: _fmt_rate(m.events_per_s)),
        ("ops/s", lambda m: _fmt_rate(m.ops_per_s)),
        _latency_column(50),
        _latency_column(99),
    ]
    _print_rows(title, results, columns, "throughput", ratio_values, file)


def system_info(**extra: Any) -> dict[str, Any]:
    """Versions and machine facts to keep next to the numbers."""
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        **extra,
    }


def write_json(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as pretty JSON to ``path``."""
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def print_latency_table(
    title: str,
    results: Mapping[str, Measurement],
    ratio_values: Mapping[str, float],
    *,
    file: Any = None,
) -> None:
    """Print a latency-only scenario: samples and percentiles per contender, then ratios."""
    columns = [("samples", lambda m: str(m.ops)), *(_latency_column(q) for q in (50, 90, 99, 100))]
    _print_rows(title, results, columns, "latency, <1: eventfold is faster", ratio_values, file)
