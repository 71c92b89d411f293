"""A real network partition for one store, in a network namespace of its own.

``tests.test_postgres_connections`` bridges a Unix socket to the PostgreSQL
server and runs this module under ``unshare -n`` (a new, empty network
namespace: its own loopback, nobody else's traffic). Here a TCP forwarder on
this namespace's 127.0.0.1 leads to the Unix socket, and the store connects
to it. Taking this loopback down is a partition in the strict sense: nothing
the store sends is acknowledged and no FIN or RST comes, which only TCP
keepalives and ``tcp_user_timeout`` can notice (a userspace proxy cannot
show that: its kernel acknowledges everything).

    python -m tests.support.partition UNIX_SOCKET CONNINFO SCHEMA

prints one JSON object: what each call raised and after how long.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from eventfold import NewEvent, StoreError
from eventfold.store.postgres import PostgresEventStore
from eventfold.testing._events import Deposited

__all__ = ["bridge"]


def _pump(one: socket.socket, other: socket.socket) -> None:
    try:
        while True:
            readable, _, _ = select.select([one, other], [], [])
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                (other if sock is one else one).sendall(data)
    except OSError:
        return
    finally:
        one.close()
        other.close()


def bridge(listener: socket.socket, connect: Any) -> None:
    """Forward every connection accepted on ``listener`` to a new ``connect()`` socket."""
    while True:
        try:
            client, _ = listener.accept()
            upstream = connect()
        except OSError:
            return
        threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()


def _loopback(state: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", state], check=True)


def _timed(call: Any) -> dict[str, Any]:
    started = time.monotonic()
    try:
        call()
    except StoreError as exc:
        return {
            "error": type(exc).__name__,
            "outcome_unknown": exc.outcome_unknown,
            "message": str(exc),
            "seconds": time.monotonic() - started,
        }
    return {"error": None, "seconds": time.monotonic() - started}


def main(unix_socket: str, conninfo: str, schema: str) -> dict[str, Any]:
    _loopback("up")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def to_server() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(unix_socket)
        return sock

    threading.Thread(target=bridge, args=(listener, to_server), daemon=True).start()
    url = f"{conninfo} host=127.0.0.1 port={port} sslmode=disable"
    report: dict[str, Any] = {}
    with PostgresEventStore(url, schema=schema, min_size=1, max_size=2, connect_timeout=2) as store:
        store.append("s", [Deposited(amount=1)])
        late = NewEvent(data=Deposited(amount=2))
        _loopback("down")  # the partition
        report["append"] = _timed(lambda: store.append("s", [late]))
        _loopback("up")
        started = time.monotonic()
        while True:
            try:
                store.append("s", [late])  # the same id: exactly once
                break
            except StoreError as exc:
                if not exc.retryable or time.monotonic() - started > 20:
                    raise
        report["recovered_seconds"] = time.monotonic() - started
        report["versions"] = [e.version for e in store.read("s")]
    return report


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
