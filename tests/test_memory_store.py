"""The memory store runs the whole conformance suite, in both flavours."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from eventfold import AsyncMemoryEventStore, MemoryEventStore
from eventfold.testing import (
    AsyncEventStoreLifecycleSuite,
    AsyncEventStoreSuite,
    EventStoreConcurrencySuite,
    EventStoreLifecycleSuite,
    EventStoreSuite,
)


class TestMemoryEventStore(EventStoreSuite, EventStoreLifecycleSuite, EventStoreConcurrencySuite):
    @pytest.fixture
    def store(self) -> Iterator[MemoryEventStore]:
        with MemoryEventStore() as store:
            yield store


class TestAsyncMemoryEventStore(AsyncEventStoreSuite, AsyncEventStoreLifecycleSuite):
    @pytest_asyncio.fixture
    async def store(self) -> AsyncIterator[AsyncMemoryEventStore]:
        async with AsyncMemoryEventStore() as store:
            yield store
