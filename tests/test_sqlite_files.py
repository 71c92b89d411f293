"""SQLite files as they meet a store: eventfold's own, foreign, damaged, read-only.

Real files and real conditions throughout: a missing directory, bytes
overwritten on disk, a read-only bind mount, SQLite's max_page_count.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from eventfold import (
    AsyncSqliteEventStore,
    ConfigurationError,
    EventfoldError,
    InvalidRequest,
    SqliteEventStore,
    StoreError,
)
from eventfold.store.sqlite._db import APPLICATION_ID, SCHEMA_VERSION, SQL
from eventfold.testing._events import Deposited
from tests.support.mounts import read_only_view


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pragma(path: Path, name: str) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        (value,) = conn.execute(f"PRAGMA {name}").fetchone()
    conn.close()
    return int(value)


def eventfold_file(path: Path, *, version: int = SCHEMA_VERSION, marked: bool = True) -> None:
    """A file as eventfold ``version`` made it; ``marked=False``: as made before the marker."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for target in range(1, version + 1):
        for statement in SQL[f"migration_{target}"].split(";\n"):
            if statement.strip():
                conn.execute(statement)
    conn.execute(
        "INSERT INTO eventfold_events (stream, version, id, type, schema_version, data,"
        " metadata, recorded_at) VALUES ('old', 1, ?, 'eventfold.testing.Deposited', 1,"
        " '{\"amount\":7}', NULL, 0)",
        (b"\x01" * 16,),
    )
    conn.execute(f"PRAGMA user_version={version}")
    if marked:
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- eventfold's marker -----------------------------------------------------------------


def test_a_new_file_carries_eventfold_marker(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    SqliteEventStore(path).close()
    assert pragma(path, "application_id") == APPLICATION_ID
    assert pragma(path, "user_version") == SCHEMA_VERSION


def test_an_empty_file_is_initialised(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    with SqliteEventStore(path) as store:
        store.append("s", [Deposited(amount=1)])
    assert pragma(path, "application_id") == APPLICATION_ID


@pytest.mark.parametrize("version", [1, SCHEMA_VERSION])
def test_a_file_of_an_earlier_eventfold_is_recognised_and_marked(
    tmp_path: Path, version: int
) -> None:
    # Earlier versions left application_id at 0: their tables say whose file it is.
    path = tmp_path / "earlier.db"
    eventfold_file(path, version=version, marked=False)
    with SqliteEventStore(path) as store:
        assert [e.data for e in store.read("old")] == [Deposited(amount=7)]
        store.append("old", [Deposited(amount=8)], expected=1)
    assert pragma(path, "application_id") == APPLICATION_ID
    assert pragma(path, "user_version") == SCHEMA_VERSION


def application_database(path: Path, user_version: int, application_id: int = 0) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER)")
    conn.execute("INSERT INTO users (name) VALUES ('ann')")
    conn.execute(f"PRAGMA user_version={user_version}")
    conn.execute(f"PRAGMA application_id={application_id}")
    conn.close()


@pytest.mark.parametrize(
    ("user_version", "application_id"), [(0, 0), (3, 0), (7, 0), (0, 0x0F0F0F0F)]
)
def test_another_applications_database_is_refused_untouched(
    tmp_path: Path, user_version: int, application_id: int
) -> None:
    path = tmp_path / "app.db"
    application_database(path, user_version, application_id)
    before = digest(path)
    for open_store in (SqliteEventStore, AsyncSqliteEventStore):
        with pytest.raises(ConfigurationError) as info:
            open_store(path)
        message = str(info.value)
        assert "is not an eventfold database" in message
        assert "orders, users" in message
        assert f"user_version {user_version}" in message
        assert f"{application_id:#010x}" in message
        assert str(path) in message
    assert digest(path) == before
    assert not path.with_name("app.db-wal").exists()  # not even switched to WAL


def test_a_database_with_only_another_marker_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "marked.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id=1234")
    conn.close()
    with pytest.raises(ConfigurationError, match="no tables, user_version 0"):
        SqliteEventStore(path)


def test_a_failed_open_closes_its_connection(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    eventfold_file(newer)
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version=99")
    conn.close()
    foreign = tmp_path / "foreign.db"
    application_database(foreign, 0)
    older = tmp_path / "older.db"
    eventfold_file(older, version=2)
    cases: list[tuple[Path, dict[str, bool]]] = [
        (newer, {}),
        (newer, {"read_only": True}),
        (foreign, {}),
        (older, {"read_only": True}),
        (damaged_schema(tmp_path), {}),
    ]
    for path, kwargs in cases:
        before = open_fds()
        with pytest.raises(EventfoldError) as info:
            SqliteEventStore(path, **kwargs)
        # The exception (held by `info`) keeps the store's frames alive: only an
        # explicit close on failure frees the file descriptor here.
        assert open_fds() == before, (path.name, kwargs, info.value)


# -- read_only=True ---------------------------------------------------------------------


WRITES: list[tuple[str, Callable[[SqliteEventStore], object]]] = [
    ("append", lambda s: s.append("s", [Deposited(amount=2)])),
    ("delete_stream", lambda s: s.delete_stream("s")),
    ("restore_stream", lambda s: s.restore_stream("s")),
    ("truncate_stream", lambda s: s.truncate_stream("s", 2)),
    ("save_snapshot", lambda s: s.save_snapshot("s", 1, "T", 1, b"{}")),
    ("delete_snapshots", lambda s: s.delete_snapshots()),
    ("set_stream_metadata", lambda s: s.set_stream_metadata("s", {"a": 1})),
]


def test_read_only_store_reads_and_refuses_every_write(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with SqliteEventStore(path) as store:
        store.append("s", [Deposited(amount=1)])
    before = digest(path)
    with SqliteEventStore(path, read_only=True) as store:
        assert store.read_only
        assert [e.data for e in store.read_all()] == [Deposited(amount=1)]
        for name, write in WRITES:
            with pytest.raises(InvalidRequest) as info:
                write(store)
            assert "read_only=True" in str(info.value), name
            assert name in str(info.value)
            assert not getattr(info.value, "retryable", False)
        with pytest.raises(InvalidRequest), store._db.write_transaction():
            pass
        assert [e.version for e in store.read("s")] == [1]
    assert digest(path) == before


@pytest.mark.asyncio
async def test_async_read_only_store_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with AsyncSqliteEventStore(path) as store:
        await store.append("s", [Deposited(amount=1)])
    async with AsyncSqliteEventStore(path, read_only=True) as store:
        assert [e.version async for e in store.read("s")] == [1]
        with pytest.raises(InvalidRequest, match="read_only=True"):
            await store.append("s", [Deposited(amount=2)])


def test_a_write_through_a_read_only_connection_is_sqlite_readonly(tmp_path: Path) -> None:
    # A projection writing through the connection of a read-only store meets
    # SQLite's own refusal (SQLITE_READONLY, from mode=ro), translated.
    path = tmp_path / "events.db"
    SqliteEventStore(path).close()
    with SqliteEventStore(path, read_only=True) as store:
        with pytest.raises(StoreError) as info, store._db.reading() as conn:
            conn.execute("CREATE TABLE read_model (x)")
        assert info.value.__cause__.sqlite_errorname == "SQLITE_READONLY"  # type: ignore[union-attr]
        assert not info.value.retryable
        assert "read_only=True" in str(info.value)


def test_read_only_never_migrates_an_older_file(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    eventfold_file(path, version=2)
    before = digest(path)
    with pytest.raises(ConfigurationError) as info:
        SqliteEventStore(path, read_only=True)
    assert "schema version 2" in str(info.value)
    assert "without read_only=True to migrate" in str(info.value)
    assert digest(path) == before


@pytest.mark.parametrize("content", [None, b""])
def test_read_only_needs_an_existing_eventfold_file(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "nothing.db"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigurationError, match=r"does not exist|is empty"):
        SqliteEventStore(path, read_only=True)
    assert path.exists() == (content is not None)


def test_read_only_memory_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="in-memory"):
        SqliteEventStore(":memory:", read_only=True)


def test_a_backup_on_a_read_only_mount_opens_read_only(tmp_path: Path) -> None:
    source = tmp_path / "backups"
    source.mkdir()
    with SqliteEventStore(source / "events.db") as store:
        store.append("s", [Deposited(amount=i) for i in range(3)])
    # A closed WAL file has no -wal or -shm; SQLite cannot create them on a
    # read-only file system.
    assert sorted(p.name for p in source.iterdir()) == ["events.db"]
    with read_only_view(source, tmp_path / "ro") as view:
        with pytest.raises(StoreError) as info:
            SqliteEventStore(view / "events.db")
        assert not info.value.retryable
        assert "read-only file system" in str(info.value)
        assert "read_only=True" in str(info.value)
        with SqliteEventStore(view / "events.db", read_only=True) as store:
            assert [e.data.amount for e in store.read("s")] == [0, 1, 2]  # type: ignore[attr-defined]
        with pytest.raises(ConfigurationError, match="does not exist"):
            SqliteEventStore(view / "other.db", read_only=True)


def test_a_live_file_seen_through_a_read_only_mount(tmp_path: Path) -> None:
    source = tmp_path / "live"
    source.mkdir()
    with SqliteEventStore(source / "events.db") as writer:
        writer.append("s", [Deposited(amount=1)])
        with read_only_view(source, tmp_path / "ro") as view:
            with SqliteEventStore(view / "events.db", read_only=True) as reader:
                assert [e.version for e in reader.read("s")] == [1]
                writer.append("s", [Deposited(amount=2)])
                assert [e.version for e in reader.read("s")] == [1, 2]
            with pytest.raises(StoreError, match="read-only file system"):
                SqliteEventStore(view / "events.db")


# -- errors that tell the truth -----------------------------------------------------------


@pytest.mark.parametrize("read_only", [False, True])
def test_a_missing_directory_is_a_configuration_error_naming_it(
    tmp_path: Path, read_only: bool
) -> None:
    missing = tmp_path / "no" / "such"
    for open_store in (SqliteEventStore, AsyncSqliteEventStore):
        with pytest.raises(ConfigurationError) as info:
            open_store(missing / "events.db", read_only=read_only)
        assert f"directory {str(missing)!r} does not exist" in str(info.value)
    assert not missing.exists()


def test_a_full_database_is_retryable_and_says_so(tmp_path: Path) -> None:
    with SqliteEventStore(tmp_path / "full.db") as store:
        store.append("s", [Deposited(amount=0)])
        conn = store._db.connection()
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count={pages + 2}")
        big = [Deposited(amount=i) for i in range(2000)]
        with pytest.raises(StoreError) as info:
            for _ in range(10):
                store.append("s", big)
        assert info.value.__cause__.sqlite_errorname == "SQLITE_FULL"  # type: ignore[union-attr]
        assert info.value.retryable
        assert "is full" in str(info.value)
        assert "max_page_count" in str(info.value)
        written = store.get_stream("s").version  # type: ignore[union-attr]
        # Space freed: the same connection writes again (no transaction left open).
        conn.execute("PRAGMA max_page_count=1073741823")
        assert store.append("s", big).to_version == written + len(big)


def test_sqlite_readonly_in_a_writable_store_is_not_retryable(tmp_path: Path) -> None:
    with SqliteEventStore(tmp_path / "q.db") as store:
        store._db.connection().execute("PRAGMA query_only=1")
        with pytest.raises(StoreError) as info:
            store.append("s", [Deposited(amount=1)])
        assert info.value.__cause__.sqlite_errorname == "SQLITE_READONLY"  # type: ignore[union-attr]
        assert not info.value.retryable
        assert "cannot be written" in str(info.value)
        assert "read_only=True" in str(info.value)


def damaged_schema(tmp_path: Path) -> Path:
    """A file whose schema text holds a byte that is not UTF-8 where SQLite parses it."""
    path = tmp_path / "schema.db"
    SqliteEventStore(path).close()
    data = bytearray(path.read_bytes())
    at = data.index(b"AUTOINCREMENT")
    data[at] = 0x85
    path.write_bytes(bytes(data))
    return path


def damaged_files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.db"
    with SqliteEventStore(good) as store:
        for i in range(300):
            store.append(f"s-{i % 7}", [Deposited(amount=i)])
    data = good.read_bytes()
    noise = random.Random(7).randbytes
    page = 4096
    kinds = {
        "random bytes": noise(8192),
        "a text file": b"meeting notes\n" * 300,
        "one byte": b"x",
        "truncated inside the header": data[:50],
        "truncated to half": data[: len(data) // 2],
        "header overwritten": noise(100) + data[100:],
        "bad page size": data[:16] + b"\x00\x03" + data[18:],
        "header kept, pages random": data[:100] + noise(len(data) - 100),
        "schema page overwritten": data[:100] + noise(page - 100) + data[page:],
    }
    files = {}
    for n, (kind, content) in enumerate(kinds.items()):
        files[kind] = tmp_path / f"damaged-{n}.db"
        files[kind].write_bytes(content)
    files["schema text not UTF-8"] = damaged_schema(tmp_path)
    return files


def use(path: Path) -> None:
    with SqliteEventStore(path) as store:
        for _ in store.read_all():
            pass
        store.append("new", [Deposited(amount=1)])


def test_damaged_files_give_one_clean_non_retryable_line(tmp_path: Path) -> None:
    for kind, path in damaged_files(tmp_path).items():
        with pytest.raises(StoreError) as info:
            use(path)
        message = str(info.value)
        assert not info.value.retryable, kind
        assert str(path) in message, kind
        assert "\n" not in message and message.isprintable(), kind
        assert "is not a usable SQLite database" in message, kind


def test_no_driver_exception_escapes_from_a_damaged_file(tmp_path: Path) -> None:
    # Bytes flipped at random places of the first pages: whatever SQLite and
    # the driver make of it, the caller sees an eventfold error (or no error).
    good = tmp_path / "good.db"
    with SqliteEventStore(good) as store:
        for i in range(200):
            store.append(f"s-{i % 7}", [Deposited(amount=i)])
    data = good.read_bytes()
    rng = random.Random(2)
    failures: dict[str, int] = {}
    for trial in range(60):
        damaged = bytearray(data)
        page = rng.choice([0, 0, 1, 2, 3])
        for _ in range(rng.choice([1, 4, 16])):
            damaged[page * 4096 + rng.randrange(100 if page == 0 else 0, 4096)] = rng.randrange(
                128, 256
            )
        path = tmp_path / f"flipped-{trial}.db"
        path.write_bytes(bytes(damaged))
        try:
            use(path)
        except EventfoldError as exc:
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
            assert "\n" not in str(exc)
    assert failures  # the damage was noticed at least sometimes
