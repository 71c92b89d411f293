"""The layout keeps its promises: one home per backend, no import cycle, private
names used only inside their own package, SQL statement names that match their
files, generated files beside their sources, docs that import public paths."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGE = SRC / "eventfold"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING"
        ):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every run-time import of ``path`` (lazy ones too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    hidden = _type_checking_lines(tree)
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in hidden:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return found


def package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        for target, names in imports(path):
            if not target.startswith("eventfold"):
                continue
            for imported in names or [""]:
                full = f"{target}.{imported}" if imported else target
                edges[name].add(full if full in mods else target)
            edges[name].discard(name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_there_is_no_import_cycle() -> None:
    assert cycles(graph()) == []


def _private_owner(module: str) -> str | None:
    """The package whose private module ``module`` is (``a.b._x`` -> ``a.b``), if any."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def private_accesses() -> list[str]:
    """Imports of a private module or name from outside the package that owns it."""
    found = []
    for name, path in modules().items():
        here = package_of(name, path)
        for target, names in imports(path):
            if not target.startswith("eventfold"):
                continue
            owner = _private_owner(target)
            if owner is not None and not (here == owner or here.startswith(owner + ".")):
                found.append(f"{name} imports {target}")
            for imported in names:
                if imported.startswith("_") and not target.startswith(here):
                    found.append(f"{name} imports {target}.{imported}")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        }
        for node in ast.walk(tree):
            # store._db, runner._backend ...: a private attribute of an object of
            # another package. Only `self._x` and `cls._x` are one's own.
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id not in ("self", "cls", "super")
                and node.attr not in own  # defined in this very module
                and not name.startswith("eventfold.store.")  # a backend and its own objects
            ):
                found.append(f"{name}: .{node.attr} on {node.value.id}")
    return found


def test_no_module_uses_private_names_of_another_package() -> None:
    assert private_accesses() == []


# A statement is looked up as SQL["name"] / self._sql["a" if x else "b"], or named
# to a helper that looks it up: self._one("name", ...).
LOOKUP = re.compile(r"""\b(?:SQL|_sql|_TEXT|statements)\[([^\]]+)\]|\b_one\(\s*(["']\w+["'])""")
QUOTED = re.compile(r"""["'](\w+)["']""")


def statement_names(text: str) -> set[str]:
    names: set[str] = set()
    for match in LOOKUP.finditer(text):
        names |= set(QUOTED.findall(match.group(1) or match.group(2)))
    return names


def test_each_backend_uses_exactly_the_statements_in_its_sql_folder() -> None:
    for backend, dynamic in (
        ("sqlite", {"migration_"}),
        ("postgres", {"migration_", "append", "append_one"}),
    ):
        folder = PACKAGE / "store" / backend
        files = {p.stem for p in (folder / "sql").glob("*.sql")}
        used: set[str] = set()
        for path in folder.glob("*.py"):
            used |= statement_names(path.read_text(encoding="utf-8"))
        named_elsewhere = {f for f in files if any(f.startswith(d) for d in dynamic)}
        assert used - files == set(), f"{backend}: statements without a file"
        assert files - used - named_elsewhere == set(), f"{backend}: files no code uses"


def test_statements_of_the_same_operation_have_the_same_name() -> None:
    sqlite = {p.stem for p in (PACKAGE / "store/sqlite/sql").glob("*.sql")}
    postgres = {p.stem for p in (PACKAGE / "store/postgres/sql").glob("*.sql")}
    shared = {
        "append", "stream_state", "stream_info", "find_event", "find_event_ids",
        "read_forward", "read_backward", "read_all", "last_position", "count_after",
        "checkpoint_get", "checkpoint_list", "checkpoint_acquire", "checkpoint_advance",
        "checkpoint_release", "checkpoint_reset", "dead_letter_add", "dead_letter_list",
        "dead_letter_clear", "alias_get", "alias_set", "mark_deleted", "restore_stream",
        "erase_stream", "erase_before", "mark_truncated", "save_snapshot", "load_snapshot",
        "delete_snapshots", "set_stream_metadata", "list_snapshots", "join_transaction",
    }  # fmt: skip
    assert shared <= sqlite and shared <= postgres


def test_no_backend_module_lives_outside_its_package() -> None:
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        inside = path.relative_to(PACKAGE).parts[:2]
        for backend, driver in (("sqlite", "sqlite3"), ("postgres", "psycopg")):
            if ("store", backend) == inside or path.parent.name == "cli":
                continue
            assert not re.search(rf"^\s*import {driver}\b|^\s*from {driver}\b", text, re.M), (
                f"{path.relative_to(ROOT)} imports {driver}: it belongs in store/{backend}/"
            )
