"""A TCP proxy on 127.0.0.1 between a store and PostgreSQL that fails on demand.

Each accepted connection is paired with one to the server and served by a
thread of its own. The proxy can

* ``freeze()``: stop forwarding in both directions without closing anything
  (what a network partition or a frozen VM looks like from the client, except
  that the proxy's kernel still acknowledges what the client sends, so TCP
  keepalives and ``tcp_user_timeout`` cannot see it; see ``test_postgres_connections``);
  ``thaw()`` resumes;
* ``cut()``: close every open connection at once (a server restart, a failover);
* ``lose_reply(marker)``: forward the request whose bytes contain ``marker``,
  let the server finish answering it (up to its ReadyForQuery, so an
  autocommit statement has committed), but drop the connection instead of
  forwarding the answer: a reply lost after a commit.

Messages from the server are framed (type byte, 4-byte length), which needs a
plaintext connection: :meth:`TcpProxy.conninfo` sets ``sslmode=disable``.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from types import TracebackType
from typing import Self

import psycopg

__all__ = ["TcpProxy"]

_READY_FOR_QUERY = ord("Z")


class _Pair:
    """One client connection and its connection to the server."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.swallowing = False  # the reply in progress is being dropped
        self.seen = b""  # the tail of the client's bytes, to find a marker across reads
        self.framing = bytearray()  # server bytes not yet framed into whole messages

    def shut(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):  # already closed by the peer
                sock.shutdown(socket.SHUT_RDWR)


class TcpProxy:
    """Forward 127.0.0.1:``port`` to ``target``; see the module docstring."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._thawed = threading.Event()
        self._thawed.set()
        self._closed = threading.Event()
        self._marker: bytes | None = None
        #: Set once a reply was dropped by ``lose_reply``.
        self.reply_lost = threading.Event()
        self._threads: list[threading.Thread] = []
        self._start(self._accept)

    @classmethod
    def to(cls, conninfo: str) -> Self:
        """A proxy to the server that ``conninfo`` names (host and port)."""
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
        return cls((str(params.get("host", "127.0.0.1")), int(params.get("port", 5432))))

    def conninfo(self, conninfo: str) -> str:
        """``conninfo`` redirected through this proxy, in plaintext."""
        return psycopg.conninfo.make_conninfo(
            conninfo, host="127.0.0.1", port=self.port, sslmode="disable", gssencmode="disable"
        )

    # -- failures on demand -----------------------------------------------------------

    def freeze(self) -> None:
        """Stop forwarding anything, on open and new connections, until :meth:`thaw`."""
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    def cut(self) -> int:
        """Close every open connection (both sides); return how many there were."""
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.shut()
        return len(pairs)

    def lose_reply(self, marker: bytes) -> None:
        """Drop the connection that sends ``marker`` once the server has answered it."""
        with self._lock:
            self.reply_lost.clear()
            self._marker = marker

    @property
    def connections(self) -> int:
        """How many client connections are open now."""
        with self._lock:
            return len(self._pairs)

    # -- plumbing ------------------------------------------------------------------

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                continue  # a client that gave up before it was accepted
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            pair = _Pair(client, server)
            with self._lock:
                self._pairs.add(pair)
            self._start(self._serve, pair)

    def _serve(self, pair: _Pair) -> None:
        try:
            self._pump(pair)
        except OSError:
            pass  # a side was closed (a cut, the client or server gone): end the pair
        finally:
            with self._lock:
                self._pairs.discard(pair)
            pair.shut()
            pair.client.close()
            pair.server.close()

    def _pump(self, pair: _Pair) -> None:
        while not self._closed.is_set():
            if not self._thawed.is_set():
                # Frozen: read nothing, so what is sent stays in the kernel's buffers.
                self._thawed.wait(0.05)
                continue
            readable, _, _ = select.select([pair.client, pair.server], [], [], 0.05)
            for sock in readable:
                if not self._thawed.is_set():
                    break
                data = sock.recv(65536)
                if not data:
                    return  # one side closed: close the other
                if sock is pair.client:
                    self._check_marker(pair, data)
                    pair.server.sendall(data)
                elif self._from_server(pair, data):
                    return

    def _check_marker(self, pair: _Pair, data: bytes) -> None:
        with self._lock:
            marker = self._marker
        if marker is None:
            return
        window = pair.seen + data
        if marker in window:
            with self._lock:
                self._marker = None
            pair.swallowing = True
        pair.seen = window[-(len(marker) - 1) :] if len(marker) > 1 else b""

    def _from_server(self, pair: _Pair, data: bytes) -> bool:
        """Forward (or swallow) server bytes; True once a swallowed reply has ended."""
        pair.framing += data
        ended = False
        while len(pair.framing) >= 5:
            length = int.from_bytes(pair.framing[1:5], "big")
            if len(pair.framing) < 1 + length:
                break
            kind = pair.framing[0]
            del pair.framing[: 1 + length]
            if pair.swallowing and kind == _READY_FOR_QUERY:
                ended = True  # the request is done (committed, in autocommit)
        if not pair.swallowing:
            pair.client.sendall(data)
        elif ended:
            self.reply_lost.set()
            return True
        return False

    def close(self) -> None:
        self._closed.set()
        self._thawed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._listener.close()
        self.cut()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
