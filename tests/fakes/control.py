"""What a fake API received and how it should answer next: the python-side control object every fake shares.

A test tells the fake what to do (`fake.fail_next(status=500, times=2)`, `fake.rate_limit_next(retry_after=1)`,
`fake.slow_next(2)`, `fake.malformed_next()`); each route takes the next queued fault and renders it in its
vendor's error format, then records the request it received.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from tests.fakes.server import serve_in_thread

FaultKind = Literal["status", "rate_limit", "slow", "malformed", "custom"]


@dataclass(frozen=True)
class Fault:
    """One queued misbehaviour of a fake."""

    kind: FaultKind
    status: int = 500
    retry_after: float = 1.0
    seconds: float = 0.0
    payload: Any = None


@dataclass(frozen=True)
class Received:
    """One request a fake received."""

    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)


class FakeControl:
    """Thread-safe record of requests and queue of faults, shared by the test and the fake's routes."""

    #: The fake's ASGI app; each fake builds it in its own __init__.
    app: Any

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque()
        self.received: list[Received] = []
        self.base_url = ""
        self._stop: Callable[[], None] | None = None

    # ---- its server ----
    def start(self) -> Self:
        """Serve the fake under uvicorn in a thread on a free port; `base_url` says where."""
        self.base_url, self._stop = serve_in_thread(self.app)
        return self

    def stop(self) -> None:
        if self._stop:
            self._stop()

    # ---- told by the test ----
    def fail_next(self, status: int = 500, times: int = 1, payload: Any = None) -> None:
        self._queue(Fault("status", status=status, payload=payload), times)

    def rate_limit_next(self, retry_after: float = 1.0, times: int = 1) -> None:
        self._queue(Fault("rate_limit", status=429, retry_after=retry_after), times)

    def slow_next(self, seconds: float, times: int = 1) -> None:
        self._queue(Fault("slow", seconds=seconds), times)

    def malformed_next(self, times: int = 1) -> None:
        self._queue(Fault("malformed", status=200), times)

    def custom_next(self, payload: Any, times: int = 1) -> None:
        """A fake-specific answer (e.g. an invalid plan), interpreted by the fake's route."""
        self._queue(Fault("custom", payload=payload), times)

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self.received.clear()

    # ---- used by the routes ----
    def take_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def record(self, method: str, path: str, headers: dict[str, str], query: dict[str, str], body: Any) -> None:
        with self._lock:
            self.received.append(Received(method, path, headers, query, body))

    def requests_to(self, path_suffix: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path.endswith(path_suffix)]

    def _queue(self, fault: Fault, times: int) -> None:
        with self._lock:
            self._faults.extend([fault] * times)
