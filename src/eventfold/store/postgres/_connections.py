"""Connections that fail in bounded time: TCP keepalives, tcp_user_timeout, the stall guard."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Generator
from time import monotonic
from typing import Any, Final, TypeVar

from eventfold._checks import check_seconds
from eventfold.errors import (
    ConfigurationError,
)
from eventfold.store.postgres._driver import (
    conninfo_to_dict,
    psycopg,
    psycopg_pool,
)

# -- connections ---------------------------------------------------------------------------

#: libpq parameters the store adds to its connections unless the conninfo sets
#: them. They bound how long a dead peer (network partition, frozen VM: nothing
#: acknowledges what is sent) goes unnoticed: an idle connection is probed after
#: 15 s, a probe every 5 s, and data (request or probe) unacknowledged for 30 s
#: ends the connection. A stalled call then fails with StoreUnavailable.
TCP_DEFAULTS: Final[dict[str, str]] = {
    "keepalives": "1",
    "keepalives_idle": "15",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",  # milliseconds
}
#: How much longer than ``statement_timeout`` the store waits for an answer
#: before it takes the connection for stalled (the server cancels first).
STALL_GRACE: Final = 5.0
_STATEMENT_TIMEOUT = re.compile(r"statement[_-]timeout\s*=")
RV = TypeVar("RV")


def _check_seconds(name: str, value: object) -> float | None:
    if value is None:
        return None
    return check_seconds(name, value, error=ConfigurationError)


def connection_settings(
    conninfo: str | None,
    *,
    connect_timeout: float,
    statement_timeout: float | None = None,
    stall_timeout: float | None = None,
) -> tuple[dict[str, Any], float | None]:
    """The connect() keyword arguments for the store's connections, and the stall timeout.

    :data:`TCP_DEFAULTS` are added where ``conninfo`` does not set them (a
    conninfo value always wins). ``statement_timeout`` (seconds) joins the
    ``options`` the conninfo (or ``PGOPTIONS``) gives; setting it there too is
    refused as ambiguous. The stall timeout is ``stall_timeout`` if given,
    else ``statement_timeout`` + :data:`STALL_GRACE`, else None (no limit).
    """
    check_seconds("connect_timeout", connect_timeout, error=ConfigurationError)
    statement = _check_seconds("statement_timeout", statement_timeout)
    stall = _check_seconds("stall_timeout", stall_timeout)
    if stall is not None and statement is not None and stall <= statement:
        raise ConfigurationError(
            f"stall_timeout ({stall:g} s) must exceed statement_timeout ({statement:g} s): "
            "a statement the server is still allowed to run would be taken for a stalled "
            "connection"
        )
    given = conninfo_to_dict(conninfo) if conninfo else {}
    kwargs: dict[str, Any] = {
        "autocommit": True,
        # libpq takes whole seconds and treats values below 2 as 2.
        "connect_timeout": max(2, math.ceil(connect_timeout)),
    }
    kwargs.update((key, value) for key, value in TCP_DEFAULTS.items() if key not in given)
    if statement is not None:
        options = str(given.get("options", os.environ.get("PGOPTIONS", "")))
        if _STATEMENT_TIMEOUT.search(options):
            raise ConfigurationError(
                f"statement_timeout is set both in the conninfo options ({options!r}) and "
                "as the store's statement_timeout=: keep one"
            )
        milliseconds = max(1, round(statement * 1000))
        kwargs["options"] = f"{options} -c statement_timeout={milliseconds}".strip()
    if stall is None and statement is not None:
        stall = statement + STALL_GRACE
    return kwargs, stall


class ConnectionStalled(psycopg.OperationalError):
    """Nothing arrived from the server for the stall timeout while the store awaited an answer."""


class PoolUnreachable(psycopg_pool.PoolTimeout):
    """The pool had room for another connection but could not open one in time."""


def guard_stall(gen: Generator[Any, Any, RV], seconds: float) -> Generator[Any, Any, RV]:
    """Wrap a psycopg I/O generator: raise ConnectionStalled after ``seconds`` of silence.

    psycopg drives a generator that yields what it waits for (readable,
    writable) and is sent what became ready; a wait that times out (every
    0.1 s) sends "nothing". The clock restarts whenever the socket is ready,
    so a long answer that keeps arriving never trips it; only silence does.
    That also catches a peer whose kernel still acknowledges every byte (a
    hung server or proxy), which TCP keepalives cannot see.
    """
    deadline = monotonic() + seconds
    try:
        waiting = next(gen)
        while True:
            ready = yield waiting
            if ready:
                deadline = monotonic() + seconds
            elif monotonic() >= deadline:
                gen.close()
                raise ConnectionStalled(
                    f"PostgreSQL sent nothing for {seconds:g} s while the store waited for "
                    "an answer: the connection is stalled (network partition, frozen or "
                    "overloaded server) and was closed"
                )
            waiting = gen.send(ready)
    except StopIteration as stop:
        result: RV = stop.value
        return result
