"""A loopback TCP proxy that can stop forwarding without closing anything.

``pause()`` makes the broker unreachable the way a dead network path does: connections stay
open, new ones are accepted, but no byte moves in either direction (what was read waits in
the proxy, the rest in the kernel's buffers) until ``resume()``. Clients see requests time
out, not connections refused or reset.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:upstream`` (threads, one pair per
    connection)."""

    def __init__(self, upstream: int, port: int = 0) -> None:
        self.upstream = upstream
        self._server = socket.create_server(("127.0.0.1", port))
        self.port: int = self._server.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.connections = 0
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> TcpProxy:
        self._acceptor.start()
        return self

    def pause(self) -> None:
        """Stop forwarding (connections stay open)."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    @property
    def paused(self) -> bool:
        return not self._flowing.is_set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        self._server.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._flowing.wait()  # a paused path accepts, then answers nothing
        try:
            up = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
            up.settimeout(None)
        except OSError:
            client.close()
            return
        with self._lock:
            if self._closed.is_set():
                client.close()
                up.close()
                return
            self._socks += [client, up]
            self.connections += 1
        for src, dst in ((client, up), (up, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()
                if self._closed.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
