#!/usr/bin/env bash
# The test command of the README: install with test extras if needed, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test,postgres]'
fi
exec .venv/bin/python -m pytest -q "$@"
