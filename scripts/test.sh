#!/usr/bin/env bash
# The test command of the README: install with test extras if needed, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# Also when .venv exists without the test extras (the demo command makes one
# with the CLI extra only).
if ! .venv/bin/python -c 'import pytest, pytest_asyncio, hypothesis, psycopg, psycopg_pool' \
    2>/dev/null; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test,postgres]'
fi
# In CI the suite also restarts the local PostgreSQL server under running
# writers (tests/test_postgres_load.py); on a developer machine that is opt-in.
if [ -n "${CI:-}" ] && [ -z "${EVENTFOLD_TEST_PG_RESTART:-}" ] \
    && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    export EVENTFOLD_TEST_PG_RESTART="pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -n 1) main restart"
fi
# In CI the suite also leaves a prepared transaction open (a two-phase commit
# nobody finishes, tests/test_postgres_horizon.py): enable them if the server
# has them off (a restart).
if [ -n "${CI:-}" ] && [ -n "${EVENTFOLD_TEST_PG_RESTART:-}" ]; then
    if [ "$(.venv/bin/python scripts/pg_setting.py max_prepared_transactions)" = 0 ]; then
        .venv/bin/python scripts/pg_setting.py max_prepared_transactions 16
        $EVENTFOLD_TEST_PG_RESTART
    fi
fi
exec .venv/bin/python -m pytest -q "$@"
