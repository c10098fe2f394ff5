"""Run an ASGI app (a fake vendor API) under uvicorn in a background thread, on a free local port."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import uvicorn

from webhook.ports import free_port


def serve_in_thread(app, *, startup_timeout_s: float = 10.0) -> tuple[str, Callable[[], None]]:
    """Start `app` on 127.0.0.1:<free port>; return its base URL (no trailing slash) and a stop function."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=1,  # a fake told to answer slowly must not hold up stop()
    )
    server = uvicorn.Server(config)  # uvicorn skips signal handlers when not in the main thread
    thread = threading.Thread(target=server.run, name=f"fake-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"fake server on port {port} did not start")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return f"http://127.0.0.1:{port}", stop
