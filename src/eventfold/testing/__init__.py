"""Test helpers: given/when/then, a controlled clock, and the conformance suites.

``DeciderSpec`` (deciders and aggregates), ``ProjectionSpec`` (given events,
then the read model) and ``ProcessSpec`` (given events, then the commands a
process manager sends); ``ManualClock`` for times and ids that are the same
on every run. The pytest plugin (``eventfold.testing.plugin``, loaded by
pytest when eventfold is installed) adds store and clock fixtures.

Run the conformance suite against any backend, including your own, by
subclassing and providing one ``store`` fixture (``CheckpointsSuite`` checks
the seam projections use: a store that passes it runs projections, and
``ProjectionsSuite`` runs the projection runner, process managers and inline
projections on it)::

    class TestMyStore(
        EventStoreSuite, EventStoreLifecycleSuite, EventStoreConcurrencySuite, CheckpointsSuite
    ):
        @pytest.fixture
        def store(self, tmp_path):
            with MyStore(tmp_path / "events.db") as store:
                yield store

This module imports pytest; import it from tests only.
"""

from eventfold.testing._checkpoints import CheckpointsSuite
from eventfold.testing._checkpoints_async import AsyncCheckpointsSuite
from eventfold.testing._conformance import EventStoreSuite
from eventfold.testing._conformance_async import AsyncEventStoreSuite
from eventfold.testing._lifecycle import EventStoreLifecycleSuite
from eventfold.testing._lifecycle_async import AsyncEventStoreLifecycleSuite
from eventfold.testing._projections import ProjectionsSuite
from eventfold.testing._projections_async import AsyncProjectionsSuite
from eventfold.testing.clock import ManualClock
from eventfold.testing.concurrency import EventStoreConcurrencySuite, follow_log, run_threads
from eventfold.testing.scenario import DeciderSpec, ProcessSpec, ProjectionSpec

__all__ = [
    "AsyncCheckpointsSuite",
    "AsyncEventStoreLifecycleSuite",
    "AsyncEventStoreSuite",
    "AsyncProjectionsSuite",
    "CheckpointsSuite",
    "DeciderSpec",
    "EventStoreConcurrencySuite",
    "EventStoreLifecycleSuite",
    "EventStoreSuite",
    "ManualClock",
    "ProcessSpec",
    "ProjectionSpec",
    "ProjectionsSuite",
    "follow_log",
    "run_threads",
]
