"""Process wiring of the receiver: `serve_receiver(settings)` (used by `upsell up` and `python -m webhook`)
and `ReceiverThread`, the same server in a background thread for tests and the benchmark."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn

from tasks.runtime.settings import DEFAULT_RECEIVER_PORT
from webhook.main import create_app
from webhook.ports import free_port
from webhook.settings import ReceiverSettings


def _config(settings: ReceiverSettings, **overrides: object) -> uvicorn.Config:
    options: dict[str, object] = {
        "host": settings.host, "port": settings.port, "log_level": "info", "access_log": False,
        # one process: per-account ordering and the dispatcher live in it (the SQLite keys guard dedupe anyway)
        "workers": 1, "timeout_graceful_shutdown": 10,
    }
    options.update(overrides)
    return uvicorn.Config(create_app(settings), **options)  # type: ignore[arg-type]


def serve_receiver(settings: ReceiverSettings | None = None) -> None:
    """Serve the receiver in the foreground (port 8000 by default) until interrupted."""
    settings = settings or ReceiverSettings()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    uvicorn.Server(_config(settings)).run()


class ReceiverThread:
    """The real receiver under uvicorn in a daemon thread, on a free port; `stop()` shuts it down cleanly."""

    def __init__(self, settings: ReceiverSettings) -> None:
        if settings.port == 0 or settings.port == DEFAULT_RECEIVER_PORT:
            settings = settings.with_port(free_port(settings.host))  # the links follow, unless set explicitly
        self.settings = settings
        self.url = f"http://{settings.host}:{settings.port}"
        self.server = uvicorn.Server(_config(settings, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name=f"receiver-{settings.port}", daemon=True)

    def start(self, timeout_s: float = 20) -> ReceiverThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"receiver did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)

    def __enter__(self) -> ReceiverThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
