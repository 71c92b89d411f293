"""Process managers (sagas): events in, idempotent commands out (sync and async).

See :class:`ProcessManager` (sync command handlers, :class:`ProjectionRunner`)
and :class:`AsyncProcessManager` (async command handlers,
:class:`AsyncProjectionRunner`); both are one source (``_processes_async.py``).
"""

from eventfold._processes import Dispatch, ProcessManager
from eventfold._processes_async import AsyncDispatch, AsyncProcessManager

__all__ = ["AsyncDispatch", "AsyncProcessManager", "Dispatch", "ProcessManager"]
