"""A vendor endpoint that accepts connections and never answers: the hung API of the timeout tests.

It reads what each client sends (so a test can tell whose request a connection carried) and holds every
connection open, without a byte in reply, until the client gives up or the server is stopped.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Self


@dataclass
class HeldConnection:
    """One connection the server accepted: when, what the client sent, and when the client closed it."""

    accepted_at: float  # time.monotonic()
    received: bytearray = field(default_factory=bytearray)
    closed_at: float | None = None


class SilentServer:
    """Listens on 127.0.0.1:<free port> in a thread; `base_url` says where; `stop()` closes everything."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._connections: list[HeldConnection] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"silent-server-{self.port}", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    def connections_with(self, marker: str) -> list[HeldConnection]:
        """The connections whose request contained `marker` (e.g. an account id in the path or the body)."""
        needle = marker.encode()
        with self._lock:
            return [c for c in self._connections if needle in c.received]

    def _serve(self) -> None:
        open_sockets: list[socket.socket] = []
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ, None)
            while not self._stopping.is_set():
                for key, _events in selector.select(timeout=0.1):
                    if key.data is None:
                        self._accept(selector, open_sockets)
                    else:
                        self._read(selector, key.fileobj, key.data)  # type: ignore[arg-type]
            for sock in open_sockets:
                sock.close()
        self._listener.close()

    def _accept(self, selector: selectors.BaseSelector, open_sockets: list[socket.socket]) -> None:
        try:
            sock, _peer = self._listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        held = HeldConnection(accepted_at=time.monotonic())
        with self._lock:
            self._connections.append(held)
        open_sockets.append(sock)
        selector.register(sock, selectors.EVENT_READ, held)

    def _read(self, selector: selectors.BaseSelector, sock: socket.socket, held: HeldConnection) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            with self._lock:
                held.received += data
            return
        selector.unregister(sock)  # the client gave up (its timeout) and closed its end
        with self._lock:
            held.closed_at = time.monotonic()
