"""Loads the SQL statements of a backend: one statement per file in ``store/<backend>/sql/``."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType

__all__ = ["load_statements"]


def load_statements(backend: str) -> Mapping[str, str]:
    """Return ``{file stem: SQL text}`` for every ``.sql`` file of ``backend``."""
    folder = resources.files(f"eventfold.store.{backend}").joinpath("sql")
    statements = {
        entry.name.removesuffix(".sql"): entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    }
    return MappingProxyType(statements)
