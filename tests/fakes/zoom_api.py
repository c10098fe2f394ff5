"""A fake Zoom API: Server-to-Server OAuth (`POST /oauth/token`) and `POST /v2/users/me/meetings`.

`fake.expire_tokens()` revokes every token it issued, so the next meeting request gets a 401 (as Zoom answers an
expired token: code 124). `fake.meetings` holds every meeting created.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from tests.fakes.control import FakeControl


class FakeZoom(FakeControl):
    """Control object and app of the fake Zoom OAuth and meetings API."""

    def __init__(
        self, account_id: str = "acc-fake", client_id: str = "cid-fake", client_secret: str = "secret"
    ) -> None:
        super().__init__()
        self.account_id = account_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = 3599
        self.valid_tokens: set[str] = set()
        self.meetings: list[dict[str, Any]] = []
        self.app = self._build_app()

    @property
    def api_base_url(self) -> str:
        return f"{self.base_url}/v2"

    def expire_tokens(self) -> None:
        self.valid_tokens.clear()

    def token_requests(self) -> int:
        return len(self.requests_to("/oauth/token"))

    async def _fault_answer(self) -> Response | None:
        fault = self.take_fault()
        if fault is None:
            return None
        if fault.kind == "rate_limit":
            return JSONResponse(
                {"code": 429, "message": "You have exceeded the rate limit."},
                status_code=429,
                headers={"Retry-After": f"{fault.retry_after:g}", "X-RateLimit-Type": "Medium"},
            )
        if fault.kind == "status":
            return JSONResponse({"code": fault.status, "message": "fake error"}, status_code=fault.status)
        if fault.kind == "malformed":
            return PlainTextResponse("{not json", media_type="application/json", status_code=201)
        if fault.kind == "slow":
            await asyncio.sleep(fault.seconds)
        return None

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/oauth/token")
        async def token(request: Request) -> Response:
            query = dict(request.query_params)
            self.record("POST", request.url.path, dict(request.headers), query, {})
            if (answer := await self._fault_answer()) is not None:
                return answer
            expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
            if request.headers.get("authorization") != f"Basic {expected}":
                return JSONResponse({"reason": "Invalid client_id or client_secret", "error": "invalid_client"}, 400)
            if query.get("grant_type") != "account_credentials" or query.get("account_id") != self.account_id:
                return JSONResponse({"reason": "Invalid request", "error": "invalid_request"}, 400)
            access_token = f"zt-{uuid.uuid4().hex}"
            self.valid_tokens.add(access_token)
            return JSONResponse(
                {
                    "access_token": access_token,
                    "token_type": "bearer",
                    "expires_in": self.expires_in,
                    "scope": "meeting:write:meeting:admin",
                    "api_url": self.base_url,
                }
            )

        @app.post("/v2/users/me/meetings")
        async def create_meeting(request: Request) -> Response:
            body = await request.json()
            self.record("POST", request.url.path, dict(request.headers), dict(request.query_params), body)
            if (answer := await self._fault_answer()) is not None:
                return answer
            presented = request.headers.get("authorization", "").removeprefix("Bearer ")
            if presented not in self.valid_tokens:
                return JSONResponse({"code": 124, "message": "Invalid access token."}, status_code=401)
            meeting_id = int(uuid.uuid4().int % 10**11)
            meeting = {
                "id": meeting_id,
                "uuid": base64.b64encode(uuid.uuid4().bytes).decode(),
                "host_id": "host-fake",
                "topic": body.get("topic", ""),
                "type": body.get("type", 2),
                "start_time": body.get("start_time"),
                "duration": body.get("duration", 30),
                "timezone": body.get("timezone", "UTC"),
                "agenda": body.get("agenda", ""),
                "join_url": f"https://fake.zoom.us/j/{meeting_id}?pwd=fake",
                "start_url": f"https://fake.zoom.us/s/{meeting_id}",
                "settings": body.get("settings", {}),
            }
            self.meetings.append(meeting)
            return JSONResponse(meeting, status_code=201)

        return app
