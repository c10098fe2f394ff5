"""A fake usage/CRM API: `GET /usage/{account_id}?metric=` and `GET /contracts/{account_id}` with a bearer token.

It records every request and can be told to answer 500 N times, 429 with Retry-After, slowly, with a
malformed body, or never (the requests to the paths in `never_answer`: a hung API).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response


@dataclass
class Seen:
    """One request the fake received."""

    method: str
    path: str
    params: dict[str, str]
    authorization: str | None


@dataclass
class UsageApiState:
    """What the fake serves and how it misbehaves; tests change it between calls."""

    token: str = "usage-token"
    # (account, metric) -> body; a str body is sent as it is (JSON with NaN or Infinity, say)
    usage: dict[tuple[str, str], dict[str, Any] | str] = field(default_factory=dict)
    contracts: dict[str, dict[str, Any] | str] = field(default_factory=dict)
    fail_500: int = 0  # answer 500 to the next N requests
    throttle_429: int = 0  # answer 429 with Retry-After to the next N requests
    retry_after_s: int = 1
    slow_s: float = 0.0  # delay of the next slow answer
    slow_count: int = 0  # how many answers are slow
    malformed: int = 0  # answer a body that does not match the schema to the next N requests
    never_answer: set[str] = field(default_factory=set)  # request paths accepted and not answered while listed
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        """Back to a well-behaved, empty API (between tests)."""
        with self.lock:
            self.usage.clear()
            self.contracts.clear()
            self.seen.clear()
            self.never_answer.clear()
            self.fail_500 = self.throttle_429 = self.slow_count = self.malformed = 0
            self.slow_s = 0.0

    def requests_to(self, prefix: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path.startswith(prefix)]


def _answer(body: dict[str, Any] | str) -> Response:
    return Response(body, media_type="application/json") if isinstance(body, str) else JSONResponse(body)


def create_app(state: UsageApiState) -> FastAPI:
    app = FastAPI()

    async def _misbehave(request: Request) -> Response | None:
        with state.lock:
            state.seen.append(
                Seen(request.method, request.url.path, dict(request.query_params), request.headers.get("authorization"))
            )
            if request.headers.get("authorization") != f"Bearer {state.token}":
                return JSONResponse({"error": "unauthorized"}, status_code=401)
            hang = request.url.path in state.never_answer
        while hang and request.url.path in state.never_answer:  # only the client's (or its step's) timeout ends it
            await asyncio.sleep(0.1)
        with state.lock:
            if state.fail_500 > 0:
                state.fail_500 -= 1
                return JSONResponse({"error": "internal"}, status_code=500)
            if state.throttle_429 > 0:
                state.throttle_429 -= 1
                return JSONResponse(
                    {"error": "slow down"}, status_code=429, headers={"Retry-After": str(state.retry_after_s)}
                )
            delay = 0.0
            if state.slow_count > 0:
                state.slow_count -= 1
                delay = state.slow_s
            malformed = state.malformed > 0
            if malformed:
                state.malformed -= 1
        if delay:
            await asyncio.sleep(delay)
        if malformed:
            return JSONResponse({"current": "lots", "period": "fortnightly"})
        return None

    @app.get("/usage/{account_id}")
    async def usage(account_id: str, request: Request, metric: str = "") -> Response:
        if (early := await _misbehave(request)) is not None:
            return early
        body = state.usage.get((account_id, metric))
        if body is None:
            return JSONResponse({"error": f"no usage for {account_id}/{metric}"}, status_code=404)
        return _answer(body)

    @app.get("/contracts/{account_id}")
    async def contract(account_id: str, request: Request) -> Response:
        if (early := await _misbehave(request)) is not None:
            return early
        body = state.contracts.get(account_id)
        if body is None:
            return JSONResponse({"error": f"no contract for {account_id}"}, status_code=404)
        return _answer(body)

    return app
