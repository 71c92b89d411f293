"""Property: any command sequence gives the same events and state on every store."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from eventfold import CommandHandler, MemoryEventStore, SqliteEventStore
from eventfold.store import EventStore
from tests.test_commands import Credit, Debit, Overdrawn, ledger

commands = st.lists(
    st.tuples(
        st.sampled_from(["acc-a", "acc-b", "acc-c"]),
        st.one_of(
            st.builds(Credit, st.integers(0, 50)),
            st.builds(Debit, st.integers(0, 80)),
        ),
    ),
    max_size=30,
)


def run(store: EventStore, script: list[tuple[str, Credit | Debit]]) -> list[object]:
    handler = CommandHandler(store, ledger)
    outcomes: list[object] = []
    for stream, command in script:
        try:
            result = handler.handle(stream, command)
            outcomes.append((result.state, result.version, result.events))
        except Overdrawn as exc:
            outcomes.append(("rejected", str(exc)))
    return outcomes


def snapshot(store: EventStore) -> list[tuple[object, ...]]:
    return [(e.position, e.stream, e.version, e.type, e.data) for e in store.read_all()]


@given(commands)
def test_memory_and_sqlite_agree(script: list[tuple[str, Credit | Debit]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        memory = MemoryEventStore()
        with SqliteEventStore(Path(tmp) / "p.db", durability="off") as sqlite:
            assert run(memory, script) == run(sqlite, script)
            assert snapshot(memory) == snapshot(sqlite)
            for stream in ("acc-a", "acc-b", "acc-c"):
                a = CommandHandler(memory, ledger).load(stream)
                b = CommandHandler(sqlite, ledger).load(stream)
                assert a == b
                assert a.state >= 0
