"""``python -m benchmarks <suite> [options]``: dispatch to a benchmark suite."""

from __future__ import annotations

import argparse
import importlib
import sys

#: suite name -> (module, one-line description)
SUITES = {
    "sqlite": (
        "benchmarks.sqlite_bench",
        "raw sqlite3 vs eventsourcing 9.5.6 vs eventfold's SqliteEventStore",
    ),
    "postgres": (
        "benchmarks.postgres_bench",
        "raw psycopg vs eventsourcing 9.5.6 vs eventfold's PostgresEventStore",
    ),
    "sqlite-contention": (
        "benchmarks.sqlite_contention_bench",
        "appends from a thread and a process while a SQL projection catches up (SQLite)",
    ),
    "projections": (
        "benchmarks.projections_bench",
        "projection catch-up and live latency: raw driver vs eventsourcing 9.5.6 vs eventfold",
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name, (module_name, help_text) in SUITES.items():
        suite_parser = sub.add_parser(name, help=help_text, description=help_text)
        suite_parser.set_defaults(module=module_name)
        # Options are defined by the suite module, imported only when listed here.
        importlib.import_module(module_name).add_arguments(suite_parser)
    args = parser.parse_args(argv)
    module = importlib.import_module(args.module)
    return int(module.run(args))


if __name__ == "__main__":
    sys.exit(main())
