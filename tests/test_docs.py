"""Every Python block of the guides in docs/ runs, in order, one namespace per page."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = [
    "concepts.md",
    "evolution.md",
    "snapshots.md",
    "corrections.md",
    "projections.md",
    "sqlite.md",
    "testing.md",
    "sqlalchemy.md",
]


@pytest.mark.parametrize("page", PAGES)
def test_doc_examples_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert blocks, f"{page} has no examples"
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType(f"docs_{page.removesuffix('.md')}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"{page} block {number}", "exec"), module.__dict__)
