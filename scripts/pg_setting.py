"""Print a setting of the test PostgreSQL server, or change it (ALTER SYSTEM).

    python scripts/pg_setting.py NAME          # prints its value
    python scripts/pg_setting.py NAME VALUE    # sets it (some need a restart)

The server is the one the tests use (EVENTFOLD_TEST_POSTGRES, default the
local server as postgres); scripts/test.sh uses it in CI.
"""

from __future__ import annotations

import os
import sys

import psycopg
from psycopg import sql

URL = os.environ.get("EVENTFOLD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    with psycopg.connect(URL, autocommit=True, connect_timeout=10) as conn:
        if len(argv) == 1:
            row = conn.execute("SELECT current_setting(%s)", (argv[0],)).fetchone()
            print(row[0] if row else "")
        else:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(
                    sql.Identifier(argv[0]), sql.Literal(argv[1])
                )
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
