"""A fake Slack Web API: `chat.postMessage` and `auth.test`, with Slack's `{"ok": false, "error": ...}` answers.

A rate-limited answer is what Slack sends: HTTP 429, a `Retry-After` header and `{"ok": false, "error": "ratelimited"}`.
`fake.fail_next(status=200, payload="channel_not_found")` queues a Slack API error (HTTP 200, ok false).
`FakeSlack(rate_limit_per_second=R)` opts in to a vendor-style limit: a `chat.postMessage` that would be the
(R+1)th accepted post within any 1-second sliding window is answered 429 (counted in `rate_limited_at`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from tests.fakes.control import FakeControl


class FakeSlack(FakeControl):
    """Control object and app of the fake Slack Web API; `messages` holds every message it accepted."""

    def __init__(self, token: str = "xoxb-fake", rate_limit_per_second: int | None = None) -> None:
        super().__init__()
        self.token = token
        self.messages: list[dict[str, Any]] = []
        self.rate_limit_per_second = rate_limit_per_second
        self.accepted_at: deque[float] = deque()  # monotonic arrival times of accepted posts in the last second
        self.rate_limited_at: list[float] = []  # monotonic arrival times of posts answered 429 by the window
        self.app = self._build_app()

    @property
    def api_url(self) -> str:
        """What slack-sdk expects as `base_url` (with the trailing slash)."""
        return f"{self.base_url}/api/"

    async def _body(self, request: Request) -> dict[str, Any]:
        if request.headers.get("content-type", "").startswith("application/json"):
            return await request.json()
        form = await request.form()
        body: dict[str, Any] = dict(form)
        if isinstance(body.get("blocks"), str):
            body["blocks"] = json.loads(body["blocks"])
        return body

    async def _fault_answer(self) -> Response | None:
        fault = self.take_fault()
        if fault is None:
            return None
        if fault.kind == "rate_limit":
            return JSONResponse(
                {"ok": False, "error": "ratelimited"},
                status_code=429,
                headers={"Retry-After": f"{fault.retry_after:g}"},
            )
        if fault.kind == "status":
            if fault.status == 200:
                return JSONResponse({"ok": False, "error": fault.payload or "internal_error"})
            return PlainTextResponse("upstream error", status_code=fault.status)
        if fault.kind == "malformed":
            return PlainTextResponse("<html>not json", media_type="application/json")
        if fault.kind == "slow":
            await asyncio.sleep(fault.seconds)
        return None

    def reset(self) -> None:
        super().reset()
        self.accepted_at.clear()
        self.rate_limited_at.clear()

    def _over_rate(self) -> Response | None:
        """Slack's own answer when this post would exceed `rate_limit_per_second` in a 1-second sliding window."""
        if self.rate_limit_per_second is None:
            return None
        now = time.monotonic()
        while self.accepted_at and now - self.accepted_at[0] >= 1.0:
            self.accepted_at.popleft()
        if len(self.accepted_at) >= self.rate_limit_per_second:
            self.rate_limited_at.append(now)
            # Whole seconds, as Slack sends them: the oldest post in the window leaves it within one second.
            return JSONResponse({"ok": False, "error": "ratelimited"}, status_code=429, headers={"Retry-After": "1"})
        self.accepted_at.append(now)
        return None

    def _authorised(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.token}"

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/api/auth.test")
        async def auth_test(request: Request) -> Response:
            self.record("POST", request.url.path, dict(request.headers), dict(request.query_params), {})
            if (answer := await self._fault_answer()) is not None:
                return answer
            if not self._authorised(request):
                return JSONResponse({"ok": False, "error": "invalid_auth"})
            return JSONResponse({"ok": True, "url": "https://fake.slack.com/", "team": "Fake", "user": "upsell-bot"})

        @app.post("/api/chat.postMessage")
        async def post_message(request: Request) -> Response:
            body = await self._body(request)
            self.record("POST", request.url.path, dict(request.headers), dict(request.query_params), body)
            if (answer := await self._fault_answer()) is not None:
                return answer
            if not self._authorised(request):
                return JSONResponse({"ok": False, "error": "invalid_auth"})
            if not body.get("channel"):
                return JSONResponse({"ok": False, "error": "channel_not_found"})
            if (limited := self._over_rate()) is not None:
                return limited
            ts = f"{time.time():.6f}"
            channel_id = "C" + str(abs(hash(body["channel"])) % 10**9).zfill(9)
            self.messages.append({**body, "ts": ts, "channel_id": channel_id})
            return JSONResponse(
                {"ok": True, "channel": channel_id, "ts": ts, "message": {"text": body.get("text", ""), "ts": ts}}
            )

        return app
