"""A loopback TCP proxy that can silently stall its connections, or refuse new ones.

A stall is the fault a reset-free network failure looks like from both ends: the proxy stops
forwarding bytes in both directions but keeps both sockets open, so neither peer sees an
error; the kernel still accepts what they send (until its buffers are full), so nothing
tells a sender that its bytes go nowhere. Connections opened after a stall are forwarded as
usual, unless the proxy refuses them (it then resets each new connection at once).

Every thread ends when :meth:`TcpProxy.close` shuts the sockets down; nothing sleeps.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

__all__ = ["TcpProxy"]

_CHUNK = 65536


class _Connection:
    """One proxied connection: the client's socket, the target's, and two pumps between."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.sockets = (client, upstream)
        self.stalled = threading.Event()
        self.threads = [
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True),
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = source.recv(_CHUNK)
                if self.stalled.is_set():
                    return  # hold what was read, read no more: the sockets stay open
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)

    def close(self, timeout: float) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a pump blocked in recv()
        for thread in self.threads:
            thread.join(timeout)
        for sock in self.sockets:
            sock.close()


class TcpProxy:
    """Forwards connections to ``target`` (``host:port``) from a port of its own on 127.0.0.1.

    Args:
        target: Where connections are forwarded.
    """

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._connections: list[_Connection] = []
        self._refusing = False
        self.accepted = 0  # connections forwarded since the start
        self.refused = 0  # connections reset because the proxy was refusing
        self._acceptor = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._acceptor.start()

    def open_connections(self) -> int:
        """How many forwarded connections are open and not stalled."""
        with self._lock:
            return sum(not c.stalled.is_set() for c in self._connections)

    def stall(self) -> int:
        """Stop forwarding on every open connection, keeping it open; return how many."""
        with self._lock:
            live = [c for c in self._connections if not c.stalled.is_set()]
            for connection in live:
                connection.stalled.set()
            return len(live)

    def refuse(self, refusing: bool = True) -> None:
        """Reset new connections at once (``True``), or forward them again (``False``)."""
        with self._lock:
            self._refusing = refusing

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                refusing = self._refusing
            if refusing:
                self._reset(client)
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                self._reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self.accepted += 1
                self._connections.append(_Connection(client, upstream))

    def _reset(self, client: socket.socket) -> None:
        with self._lock:
            self.refused += 1
        # SO_LINGER 0: close with a reset, as a port nobody listens on would answer.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, close every connection, and join every thread."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self._acceptor.join(timeout)
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close(timeout)
