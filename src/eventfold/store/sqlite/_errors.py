"""The SQLite backend's one error boundary: sqlite3 exceptions become eventfold errors.

Errors are told apart by SQLite's result code (``sqlite_errorcode``, Python
3.11), not by their text; the text of SQLite's message only ends up in ours,
cleaned to one printable line (a damaged file can put any bytes there, which
is also why the driver sometimes raises ``UnicodeDecodeError`` instead).

What each condition becomes, and whether retrying can help:

==============================  ===============================  =========
SQLite says                     eventfold raises                 retryable
==============================  ===============================  =========
BUSY, LOCKED                    StoreTimeout                     yes
FULL (disk or max_page_count)   StoreError                       yes
CORRUPT, NOTADB, bad UTF-8      StoreError                       no
READONLY, PERM, CANTOPEN on a   StoreError (suggests             no
read-only or forbidden path     ``read_only=True``)
CANTOPEN, directory missing     ConfigurationError               no
CANTOPEN otherwise, IOERR       StoreUnavailable                 yes
INTERRUPT, use after close()    StoreClosed                      no
anything else                   StoreError                       no
==============================  ===============================  =========
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from eventfold.errors import (
    ConfigurationError,
    EventfoldError,
    StoreClosed,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)

__all__ = [
    "Translate",
    "closed_error",
    "missing_directory_error",
    "not_a_database_error",
    "on_read_only_file_system",
    "read_only_error",
    "translate",
    "write_obstacle",
]

_MESSAGE_LIMIT = 160


def clean(message: str) -> str:
    """One printable line of at most 160 characters."""
    text = "".join(c if c.isprintable() else "?" for c in " ".join(message.split()))
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


def closed_error(path: str) -> StoreClosed:
    """The error of any use of a closed store."""
    return StoreClosed(f"SQLite store {path!r} is closed")


def not_a_database_error(path: str, detail: str) -> StoreError:
    """A file that is not SQLite's, or damaged: retrying cannot help."""
    return StoreError(
        f"{path!r} is not a usable SQLite database ({detail}): it is damaged or "
        "not a database at all; restore it from a backup or give eventfold another path"
    )


def missing_directory_error(path: str, directory: Path) -> ConfigurationError:
    """The file's directory does not exist (SQLite creates files, never directories)."""
    return ConfigurationError(
        f"cannot open SQLite database {path!r}: its directory {str(directory)!r} "
        "does not exist; create it first"
    )


def read_only_error(path: str, why: str) -> StoreError:
    """The file cannot be written here: retrying cannot help."""
    return StoreError(
        f"SQLite database {path!r} cannot be written: {why}; "
        "to read it, open it with read_only=True"
    )


def on_read_only_file_system(path: Path) -> bool:
    """Whether ``path``'s directory is on a file system mounted read-only."""
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def write_obstacle(path: Path) -> str | None:
    """Why SQLite could not write ``path`` (and its journal files) here, or None.

    A read-only file system stops root too; permission bits stop others.
    """
    directory = path.parent
    if on_read_only_file_system(path):
        return f"{str(directory)!r} is on a read-only file system"
    journals = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    for target in (path, *journals):
        if target.exists() and not os.access(target, os.W_OK):
            return f"permission denied to write {str(target)!r}"
    if not all(t.exists() for t in (path, *journals)) and not os.access(directory, os.W_OK):
        return f"permission denied to create files in {str(directory)!r}"
    return None


def _cannot_open(exc: sqlite3.Error, path: str, read_only: bool) -> EventfoldError:
    """SQLITE_CANTOPEN: find out why from the file system (SQLite does not say)."""
    file = Path(path).absolute()
    if not file.parent.is_dir():
        return missing_directory_error(path, file.parent)
    if read_only and not file.exists():
        return ConfigurationError(
            f"SQLite database {path!r} does not exist (read_only=True opens existing files only)"
        )
    why = write_obstacle(file)
    if why is not None and read_only:
        return StoreError(
            f"cannot open SQLite database {path!r} read-only: {why}, and SQLite needs "
            "to create the -shm file of a WAL database beside it; copy the file to a "
            "writable directory"
        )
    if why is not None:
        return read_only_error(path, why)
    return StoreUnavailable(f"cannot open SQLite database {path!r}: {clean(str(exc))}")


def translate(
    exc: BaseException, path: str, *, closed: bool, read_only: bool, busy_timeout: float
) -> EventfoldError | None:
    """The eventfold error for a driver exception, or None if ``exc`` is not the driver's."""
    if isinstance(exc, UnicodeDecodeError):
        # The driver could not decode SQLite's own message: its text came from
        # a damaged schema.
        return not_a_database_error(path, "SQLite's error message is not UTF-8 text")
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    message = clean(str(exc))
    if closed and (primary in (sqlite3.SQLITE_INTERRUPT, None, sqlite3.SQLITE_MISUSE)):
        return closed_error(path)
    if primary is None and isinstance(exc, sqlite3.ProgrammingError) and "closed" in message:
        return closed_error(path)
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreTimeout(
            f"SQLite database {path!r} stayed locked by another connection past "
            f"busy_timeout ({busy_timeout:g} s); retry, or raise busy_timeout"
        )
    if primary == sqlite3.SQLITE_FULL:
        full = StoreError(
            f"SQLite database {path!r} is full: the disk has no space left or the "
            "database reached its max_page_count; nothing was written, retry once "
            "space is freed (or max_page_count raised)"
        )
        full.retryable = True
        return full
    if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return not_a_database_error(path, f"{name}: {message}")
    if primary in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM):
        if read_only:
            return StoreError(f"SQLite store {path!r} was opened with read_only=True: {message}")
        why = write_obstacle(Path(path).absolute()) if path != ":memory:" else None
        return read_only_error(path, why or f"{name}: {message}")
    if primary == sqlite3.SQLITE_CANTOPEN:
        return _cannot_open(exc, path, read_only)
    if primary == sqlite3.SQLITE_IOERR:
        return StoreUnavailable(f"disk I/O error on SQLite database {path!r}: {message} ({name})")
    return StoreError(f"SQLite error on {path!r}: {message} ({name})")


class Translate:
    """``with translate:`` raises the eventfold error of a driver exception, from it."""

    __slots__ = ("busy_timeout", "is_closed", "path", "read_only")

    def __init__(
        self, path: str, *, read_only: bool, busy_timeout: float, is_closed: Callable[[], bool]
    ) -> None:
        self.path = path
        self.read_only = read_only
        self.busy_timeout = busy_timeout
        self.is_closed = is_closed

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.raise_for(exc)

    def raise_for(self, exc: BaseException) -> None:
        """Raise the eventfold error for ``exc`` (chained), if it is the driver's."""
        error = translate(
            exc,
            self.path,
            closed=self.is_closed(),
            read_only=self.read_only,
            busy_timeout=self.busy_timeout,
        )
        if error is not None:
            raise error from exc
