"""Every Python block of the README runs, in order, in one namespace."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 4


def test_readme_states_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "eventfold demo" in text
    assert "bash scripts/test.sh" in text


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # A real module, so dataclasses and event classes defined in blocks resolve it.
    module = types.ModuleType("readme_examples")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for number, block in enumerate(BLOCKS, 1):
        code = compile(block, f"README.md block {number}", "exec")
        exec(code, module.__dict__)
