"""Amazon SES for the tests: moto in server mode (real HTTP), and a recording proxy that can misbehave.

The proxy sits between boto3 and moto. It records each request body (so a test sees exactly what went on
the wire, e.g. `ConfigurationSetName`, which moto does not keep) and can be told to answer an error without
forwarding, or to forward and then answer too late (the email is sent, the client times out).
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from moto.server import ThreadedMotoServer

_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "content-encoding"}


def start_moto() -> tuple[str, ThreadedMotoServer]:
    """moto on 127.0.0.1 and a free port; returns its URL and the server (call `.stop()`)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}", server


def sent_raw_messages(moto_url: str) -> list[dict[str, Any]]:
    """Every raw message moto's SES accepted: {id, source, destinations, raw_data}."""
    data = httpx.get(f"{moto_url}/moto-api/data.json", timeout=10).raise_for_status().json()
    return list(data.get("ses", {}).get("RawMessage", []))


def parse_raw(raw_data: str) -> EmailMessage:
    return BytesParser(policy=policy.default).parsebytes(raw_data.encode())  # type: ignore[return-value]


@dataclass
class ProxyState:
    """What the proxy has seen and how it should misbehave next."""

    upstream: str
    requests: list[dict[str, Any]] = field(default_factory=list)  # {"method", "path", "json"}
    fail: list[tuple[int, str]] = field(default_factory=list)  # (status, error type) per next send
    late_s: float = 0.0  # forward the next send, then answer this late
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sends(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == "/v2/email/outbound-emails"]

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.fail.clear()
            self.late_s = 0.0


def create_proxy(state: ProxyState) -> FastAPI:
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def forward(path: str, request: Request) -> Response:
        body = await request.body()
        is_send = request.url.path == "/v2/email/outbound-emails"
        with state.lock:
            state.requests.append({"method": request.method, "path": request.url.path, "json": _json_or_none(body)})
            failure = state.fail.pop(0) if is_send and state.fail else None
            late, state.late_s = (state.late_s, 0.0) if is_send else (0.0, state.late_s)
        if failure is not None:
            status, error_type = failure
            return JSONResponse(
                {"message": f"injected {error_type}"}, status_code=status, headers={"x-amzn-ErrorType": error_type}
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with httpx.AsyncClient(base_url=state.upstream, timeout=30) as client:
            upstream = await client.request(
                request.method, request.url.path, params=request.query_params, content=body, headers=headers
            )
        if late:
            await asyncio.sleep(late)  # the email went out; the answer comes after the client gave up
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            headers={k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP},
        )

    return app


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None
