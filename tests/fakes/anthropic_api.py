"""A fake Anthropic Messages API: `POST /v1/messages` answers with a `tool_use` block carrying a plan.

`fake.plan` is the plan it answers by default; `fake.invalid_plan_next(plan)` queues one invalid answer.
A request that forces the `record_reply_intent` tool (the reply classifier) gets `fake.reply_intent` instead, or the
answer of the first marker of `fake.intents_for` its text contains; `fake.custom_next(input)` queues any tool input
and `fake.text_answer_next()` an answer with no tool call at all.
Errors use Anthropic's shape: `{"type": "error", "error": {"type": ..., "message": ...}}`.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from tests.fakes.control import FakeControl

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

REPLY_TOOL = "record_reply_intent"
DEFAULT_REPLY_INTENT: dict[str, Any] = {"intent": "yes", "confidence": 0.9}
#: The custom payload that makes the fake answer with text only (no tool call).
TEXT_ONLY = "__text_only__"

DEFAULT_PLAN: dict[str, Any] = {
    "recommended_plan": "Professional",
    "estimated_value": 30000.0,
    "justification": "Trade volume is 50% over the Growth cap and growing 35% a month.",
    "features": ["Up to 10,000 trades/month", "Real-time reports"],
    "roi_analysis": "Removes the cap the account already exceeds.",
    "risk_assessment": "Low: usage keeps growing.",
}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


class FakeAnthropic(FakeControl):
    """Control object and app of the fake Messages API."""

    def __init__(self) -> None:
        super().__init__()
        self.plan: dict[str, Any] = dict(DEFAULT_PLAN)
        #: marker -> plan: a request whose first message contains the marker (say an account id) gets that plan
        self.plans_for: dict[str, dict[str, Any]] = {}
        #: the reply classifier's answer, and marker -> answer as for plans
        self.reply_intent: dict[str, Any] = dict(DEFAULT_REPLY_INTENT)
        self.intents_for: dict[str, dict[str, Any]] = {}
        self.api_key = "sk-ant-fake"  # the SDK sends it as x-api-key or as a bearer token, depending on version
        self.app = self._build_app()

    def invalid_plan_next(self, plan: dict[str, Any] | None = None, times: int = 1) -> None:
        """Answer a tool_use whose input is `plan` (default: a plan that is not in any catalogue)."""
        self.custom_next({**DEFAULT_PLAN, "recommended_plan": "Platinum Galaxy"} if plan is None else plan, times)

    def text_answer_next(self, times: int = 1) -> None:
        """Answer with a text block only: the model ignored the forced tool."""
        self.custom_next(TEXT_ONLY, times)

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/messages")
        async def messages(request: Request) -> Response:
            body = await request.json()
            self.record("POST", request.url.path, dict(request.headers), dict(request.query_params), body)
            fault = self.take_fault()
            first = str(body["messages"][0]["content"])
            tool = (body.get("tool_choice") or {}).get("name") or (body.get("tools") or [{}])[0].get("name")
            if tool == REPLY_TOOL:
                plan = next((a for marker, a in self.intents_for.items() if marker in first), self.reply_intent)
            else:
                plan = next((p for marker, p in self.plans_for.items() if marker in first), self.plan)
            if fault is not None:
                if fault.kind == "rate_limit":
                    return _error(429, "rate limited", {"retry-after": f"{fault.retry_after:g}"})
                if fault.kind == "status":
                    return _error(fault.status, fault.payload or f"fake error {fault.status}")
                if fault.kind == "malformed":
                    return PlainTextResponse('{"id": "msg_broken", "content": [', media_type="application/json")
                if fault.kind == "slow":
                    await asyncio.sleep(fault.seconds)
                if fault.kind == "custom":
                    plan = fault.payload
            bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
            presented = request.headers.get("x-api-key") or bearer
            if presented != self.api_key:
                return _error(401, "invalid x-api-key")
            if plan == TEXT_ONLY:
                content: list[dict[str, Any]] = [{"type": "text", "text": "I think the customer says yes."}]
            else:
                content = [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": tool, "input": plan}]
            return JSONResponse(
                {
                    "id": f"msg_{uuid.uuid4().hex[:24]}",
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model", "claude-fake"),
                    "content": content,
                    "stop_reason": "tool_use" if plan != TEXT_ONLY else "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": 100, "output_tokens": 50},
                }
            )

        return app
