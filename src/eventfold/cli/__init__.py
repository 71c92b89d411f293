"""The ``eventfold`` command line (extra ``[cli]``: typer and rich).

``eventfold demo`` runs the bank-account example on a SQLite file;
``eventfold streams`` and ``eventfold show`` browse a store (``--db`` SQLite
file or ``--postgres`` conninfo); ``eventfold migrate`` creates or upgrades a
PostgreSQL schema; ``eventfold snapshots prune`` deletes stale snapshots.
Importing this package does not import typer or rich; :func:`main` does.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["INSTALL_HINT", "main"]

#: What to run when the command line's dependencies are missing.
INSTALL_HINT = "install eventfold[cli]: pip install 'eventfold[cli]'"
_CLI_DEPENDENCIES = frozenset({"typer", "rich", "click"})


def main() -> None:
    """Run the ``eventfold`` command (the console script's entry point)."""
    try:
        # import_module (not a from-import) so a module dropped from
        # sys.modules is really imported again.
        cli = importlib.import_module("eventfold.cli._app")
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] not in _CLI_DEPENDENCIES:
            raise
        print(f"eventfold: the command line needs {exc.name}; {INSTALL_HINT}", file=sys.stderr)
        raise SystemExit(1) from None
    cli.app(prog_name="eventfold")
