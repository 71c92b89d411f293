"""The public surface: curated exports, no optional imports, generated code current."""

from __future__ import annotations

import ast
import re
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
        " 'uvicorn', 'pytest', 'hypothesis', 'pydantic', 'opentelemetry') if m in sys.modules]\n"
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


PUBLIC_MODULES = [
    "eventfold",
    "eventfold.aggregate",
    "eventfold.bus",
    "eventfold.commands",
    "eventfold.decider",
    "eventfold.errors",
    "eventfold.events",
    "eventfold.evolution",
    "eventfold.processes",
    "eventfold.projections",
    "eventfold.serialization",
    "eventfold.snapshots",
    "eventfold.sqlalchemy",
    "eventfold.starlette",
    "eventfold.store",
    "eventfold.store.memory",
    "eventfold.store.postgres",
    "eventfold.store.sqlite",
    "eventfold.testing",
    "eventfold.testing.clock",
    "eventfold.testing.plugin",
]


def test_each_public_name_has_one_defining_module() -> None:
    import importlib  # noqa: PLC0415

    seen: dict[str, tuple[object, str]] = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"{module_name} has no __all__"
        assert sorted(set(exported)) == sorted(exported), f"{module_name}: __all__ repeats a name"
        for name in exported:
            value = getattr(module, name)
            if name in seen:
                first, where = seen[name]
                assert value is first, f"{name}: {module_name} and {where} export different objects"
            else:
                seen[name] = (value, module_name)
        # complete: every class or function defined in the module is listed
        for name, value in vars(module).items():
            defined_here = getattr(value, "__module__", None) == module_name
            if not name.startswith("_") and defined_here and isinstance(value, type | type(len)):
                assert name in exported, f"{module_name}.{name} is public but not in __all__"


def test_postgres_stores_are_named_at_the_top_and_say_what_to_install() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "import eventfold\n"
        "assert 'PostgresEventStore' in dir(eventfold)\n"
        "try:\n"
        "    from eventfold import PostgresEventStore\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'eventfold[postgres]'" in out.stdout
    import eventfold.store.postgres as face  # noqa: PLC0415 - the extra, named on purpose

    assert eventfold.PostgresEventStore is face.PostgresEventStore
    assert eventfold.AsyncPostgresEventStore is face.AsyncPostgresEventStore


def _python_of(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        return "\n".join(re.findall(r"```python\n(.*?)```", text, re.DOTALL))
    return text


def test_docs_and_examples_import_public_paths_only() -> None:
    paths = [*(ROOT / "docs").glob("*.md"), ROOT / "README.md"]
    paths += [p for p in (ROOT / "examples").rglob("*.py") if not p.name.startswith("test_")]
    for path in paths:
        for node in ast.walk(ast.parse(_python_of(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("eventfold"):
                module = node.module or ""
                assert not any(part.startswith("_") for part in module.split(".")), (
                    f"{path.name} imports {module}"
                )
                for alias in node.names:
                    assert not alias.name.startswith("_"), f"{path.name}: {module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("eventfold"):
                        parts = alias.name.split(".")
                        assert not any(part.startswith("_") for part in parts), path.name
