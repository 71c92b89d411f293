"""Read-only views of a directory: a real read-only bind mount (``mount --bind -o ro``).

Root ignores permission bits, so only a read-only file system makes SQLite
meet a file it cannot write, as on a backup volume. Making the mount needs
CAP_SYS_ADMIN: where ``mount`` is refused the test is skipped, except in CI,
where it fails (the CI machine runs the suite as root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["read_only_view"]


@contextmanager
def read_only_view(source: Path, view: Path) -> Iterator[Path]:
    """Mount ``source`` read-only at ``view`` (created) for the block; unmount after."""
    view.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    done = (
        subprocess.run(
            [mount, "--bind", "-o", "ro", str(source), str(view)],
            capture_output=True,
            text=True,
            check=False,
        )
        if mount is not None
        else None
    )
    if done is None or done.returncode != 0:
        reason = "no mount command" if done is None else done.stderr.strip()
        if os.environ.get("CI"):
            pytest.fail(f"a read-only bind mount is needed in CI: {reason}")
        pytest.skip(f"cannot make a read-only bind mount here: {reason}")
    try:
        yield view
    finally:
        # Lazy: a connection the test failed to close must not leave the mount behind.
        subprocess.run(["umount", "--lazy", str(view)], check=True)
