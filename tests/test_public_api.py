"""The public surface: curated exports, no optional imports, generated code current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import eventfold

ROOT = Path(__file__).resolve().parent.parent


def test_all_is_sorted_and_complete() -> None:
    assert eventfold.__all__ == sorted(eventfold.__all__)
    for name in eventfold.__all__:
        assert getattr(eventfold, name) is not None


def test_public_names_have_docstrings() -> None:
    for name in eventfold.__all__:
        obj = getattr(eventfold, name)
        if isinstance(obj, type) or callable(obj):
            assert obj.__doc__, name


def test_import_does_not_pull_optional_dependencies() -> None:
    code = (
        "import sys, eventfold, eventfold.store.sqlite, eventfold.store.memory\n"
        "bad = [m for m in ('psycopg', 'psycopg_pool', 'typer', 'rich', 'starlette',"
        " 'uvicorn', 'pytest', 'hypothesis') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_generated_sync_code_is_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "unasync.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
