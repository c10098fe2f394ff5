"""Free local ports, for the receiver thread and the local stack (imports neither prefect nor the app, so
`deployments.stack` can use it before PREFECT_HOME is set)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
