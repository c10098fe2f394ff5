"""Helpers shared by the receiver tests, and the receiver's pure logic (signatures, settings) tested directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterIdempotencyKey
from pydantic import ValidationError

from deployments.stack import stop_process
from tasks.runtime.signing import sign
from webhook.settings import ReceiverSettings
from webhook.signing import SignatureError, verify_signature

SECRET = "whsec_current_0123456789abcdef"
OLD_SECRET = "whsec_previous_0123456789abcdef"
#: The report's bearer token of the test receivers: /healthz shows its details only to it.
REPORT_TOKEN = "report-token-0123456789abcdef"


def alert(**fields: Any) -> dict[str, Any]:
    """A qualifying alert (high severity, eligible metric) for a fresh account; override any field."""
    suffix = uuid.uuid4().hex[:10]
    body = {
        "event_id": f"evt-{suffix}", "account_id": f"acct-{suffix}", "metric_type": "trade_volume",
        "current_value": 150, "threshold": 100, "severity": "high",
    }
    body.update(fields)
    return body


def signed_headers(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    return {"content-type": "application/json", "X-Upsell-Signature": sign(body, secret, timestamp)}


def post_alert(client: httpx.Client, payload: dict[str, Any] | bytes, secret: str = SECRET) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return client.post("/alerts", content=body, headers=signed_headers(body, secret))


def get_status(client: httpx.Client, event_id: str) -> httpx.Response:
    path = f"/alerts/{event_id}"
    return client.get(path, headers={"X-Upsell-Signature": sign(path.encode(), SECRET)})


def health_of(client: httpx.Client) -> dict[str, Any]:
    """/healthz with its details (spool depth, Prefect API), as the report's credentials see it."""
    return client.get("/healthz", headers={"authorization": f"Bearer {REPORT_TOKEN}"}).json()


def runs_with_key(event_id: str) -> list[Any]:
    """The flow runs Prefect holds for this event (by the idempotency key the receiver uses)."""
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(
            idempotency_key=FlowRunFilterIdempotencyKey(any_=[f"upsell:{event_id}"])))


# ---- pure logic ----


def test_signature_accepts_any_active_secret_and_any_v1():
    body = b'{"a": 1}'
    now = int(time.time())
    verify_signature(sign(body, SECRET, now), body, [SECRET.encode()], 300)
    verify_signature(sign(body, OLD_SECRET, now), body, [SECRET.encode(), OLD_SECRET.encode()], 300)
    forged = sign(body, "not-the-secret-at-all", now).split(",v1=")[1]
    good = sign(body, SECRET, now).split(",v1=")[1]
    verify_signature(f"t={now},v1={forged},v1={good}", body, [SECRET.encode()], 300)
    # and what makes each of those pass: without the matching secret or candidate, the same calls are refused
    with pytest.raises(SignatureError, match="signature"):
        verify_signature(sign(body, OLD_SECRET, now), body, [SECRET.encode()], 300)  # a retired secret
    with pytest.raises(SignatureError, match="signature"):
        verify_signature(f"t={now},v1={forged}", body, [SECRET.encode()], 300)
    with pytest.raises(SignatureError, match="signature"):
        verify_signature(sign(body, SECRET, now), body + b" ", [SECRET.encode()], 300)  # another body


@pytest.mark.parametrize("header, reason", [
    (None, "missing"),
    ("", "missing"),
    ("v1=abc", "malformed"),
    ("t=abc,v1=abc", "malformed"),
    ("t=123", "malformed"),
    ("garbage", "malformed"),
    ("t={old},v1={sig_old}", "stale"),
    ("t={future},v1={sig_future}", "stale"),
    ("t={now},v1={sig_other}", "does not match"),
])
def test_signature_refusals_name_the_reason(header, reason):
    body = b'{"a": 1}'
    now = int(time.time())
    values = {
        "now": now, "old": now - 310, "future": now + 310,
        "sig_old": sign(body, SECRET, now - 310).split("v1=")[1],
        "sig_future": sign(body, SECRET, now + 310).split("v1=")[1],
        "sig_other": sign(body, "another-secret-0123456789", now).split("v1=")[1],
    }
    with pytest.raises(SignatureError, match=reason):
        verify_signature(header.format(**values) if header else header, body, [SECRET.encode()], 300)


def test_settings_require_signing_unless_dev_flag(monkeypatch):
    monkeypatch.delenv("UPSELL_WEBHOOK_SECRETS", raising=False)
    with pytest.raises(ValidationError, match="UPSELL_WEBHOOK_SECRETS must be set"):
        ReceiverSettings()
    monkeypatch.setenv("UPSELL_WEBHOOK_SECRETS", f"{SECRET}, {OLD_SECRET}")
    monkeypatch.setenv("UPSELL_QUALIFYING_METRICS", "a,b")
    settings = ReceiverSettings()
    assert settings.secret_values() == [SECRET.encode(), OLD_SECRET.encode()]
    assert settings.qualifying_metrics == ["a", "b"] and settings.port == 8000
    monkeypatch.setenv("UPSELL_WEBHOOK_INSECURE_DEV", "true")
    monkeypatch.setenv("UPSELL_ENVIRONMENT", "production")
    monkeypatch.setenv("UPSELL_LINK_SECRET", "a-real-link-secret-for-production")
    monkeypatch.setenv("UPSELL_PUBLIC_BASE_URL", "https://upsell.example.com")  # production refuses loopback links
    monkeypatch.setenv("UPSELL_SENDER_POSTAL_ADDRESS", "Acme Ltd, 2 Side Street, Springfield")  # and the placeholder
    with pytest.raises(ValidationError, match="refused when UPSELL_ENVIRONMENT=production"):
        ReceiverSettings()


def test_module_app_is_built_lazily_from_the_environment(monkeypatch):
    import webhook.main as module

    assert "_lazy_app" in vars(module) and module._lazy_app is None  # importing built nothing
    monkeypatch.setenv("UPSELL_WEBHOOK_SECRETS", SECRET)
    app = module.app
    assert app.state.settings.secret_values() == [SECRET.encode()] and module.app is app


class PrefectServer:
    """A separate `prefect server start` subprocess with its own home and database; stopped by PID."""

    def __init__(self, home: Path, port: int) -> None:
        self.home, self.port = home, port
        self.api_url = f"http://127.0.0.1:{port}/api"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update({
            "PREFECT_HOME": str(self.home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.home / 'prefect.db'}",
        })
        log = (self.home / "server.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prefect server exited: {(self.home / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError("prefect server did not start")

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None
