"""The receiver under uvicorn against the session Prefect server: signatures, the alert contract, bad input,
exactly-once under concurrent deliveries, one open upsell per account and the cooldown."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.states import Cancelled

from flows.upsell import upsell
from tasks.runtime.signing import sign
from tests.test_webhook_support import (
    OLD_SECRET,
    REPORT_TOKEN,
    SECRET,
    alert,
    get_status,
    health_of,
    post_alert,
    runs_with_key,
    signed_headers,
)
from webhook.gateway import attached_key
from webhook.serve import ReceiverThread
from webhook.settings import ReceiverSettings

#: Not served by the session runner, so the runs these tests create stay Scheduled (open) and cost no CPU.
DEPLOYMENT = "upsell/receiver-tests"


@pytest.fixture(scope="module")
def deployment(prefect_server: str) -> str:
    upsell.to_deployment(name="receiver-tests", enforce_parameter_schema=True).apply()
    return DEPLOYMENT


def _settings(tmp: Path, api_url: str, **fields) -> ReceiverSettings:
    return ReceiverSettings(
        webhook_secrets=[SECRET, OLD_SECRET], data_dir=tmp, receiver_db=tmp / "receiver.db", prefect_api_url=api_url,
        deployment_name=DEPLOYMENT, cooldown_s=2.0, prefect_timeout_s=10, report_token=REPORT_TOKEN, **fields,
    )


@pytest.fixture(scope="module")
def client(deployment, prefect_server, tmp_path_factory) -> Iterator[httpx.Client]:
    settings = _settings(tmp_path_factory.mktemp("receiver"), prefect_server)
    with ReceiverThread(settings) as receiver, httpx.Client(base_url=receiver.url, timeout=30) as http:
        yield http


# ---- signatures ----


def test_signed_alert_starts_one_upsell(client):
    payload = alert(severity="critical")
    response = post_alert(client, payload)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["triggered"] is True and body["duplicate"] is False
    assert body["automation_level"] == "FULL_AUTOMATION"
    runs = runs_with_key(payload["event_id"])
    assert [str(r.id) for r in runs] == [body["flow_run_id"]]
    assert runs[0].parameters["alert"]["account_id"] == payload["account_id"]


def test_rotated_secret_still_accepted(client):
    response = post_alert(client, alert(), secret=OLD_SECRET)
    assert response.status_code == 202, response.text


def _sig(body: bytes, secret: str = SECRET, skew: int = 0) -> str:
    return sign(body, secret, int(time.time()) + skew)


@pytest.mark.parametrize("case", ["missing", "malformed", "no_v1", "bad_t", "forged", "stale", "future", "tampered"])
def test_bad_signatures_get_401_with_reason(client, case):
    payload = alert()
    body = json.dumps(payload).encode()
    header = {
        "missing": None,
        "malformed": "sha256=deadbeef",
        "no_v1": f"t={int(time.time())}",
        "bad_t": "t=yesterday,v1=00",
        "forged": _sig(body, "someone-elses-secret-123456"),
        "stale": _sig(body, skew=-310),
        "future": _sig(body, skew=+310),
        "tampered": _sig(json.dumps({**payload, "current_value": 9999}).encode()),
    }[case]
    headers = {"content-type": "application/json"} | ({"X-Upsell-Signature": header} if header else {})
    response = client.post("/alerts", content=body, headers=headers)
    assert response.status_code == 401, response.text
    answer = response.json()
    assert answer["error"] == "invalid_signature" and answer["field"] == "X-Upsell-Signature"
    expected = {"missing": "missing", "malformed": "malformed", "no_v1": "malformed", "bad_t": "malformed",
                "stale": "stale", "future": "in the future"}.get(case, "does not match")
    assert expected in answer["detail"]
    assert runs_with_key(payload["event_id"]) == []


def test_insecure_dev_flag_accepts_unsigned_and_says_so(deployment, prefect_server, tmp_path):
    settings = _settings(tmp_path, prefect_server, webhook_insecure_dev=True)
    with ReceiverThread(settings) as receiver, httpx.Client(base_url=receiver.url) as http:
        health = health_of(http)
        assert health["signing"] == "disabled" and "INSECURE_DEV" in health["warning"]
        response = http.post("/alerts", json=alert())
        assert response.status_code == 202, response.text


# ---- the contract and bad input ----


@pytest.mark.parametrize("raw, status, field", [
    (b'{"event_id": "e1",', 400, "body"),
    (b"[1, 2]", 400, "body"),
    (b"\xff\xfe not utf-8", 400, "body"),
    ("missing:account_id", 422, "account_id"),
    ("set:current_value='150'", 422, "current_value"),
    ("set:current_value=true", 422, "current_value"),
    ("set:threshold=-1", 422, "threshold"),
    ("set:severity='urgent'", 422, "severity"),
    ("set:event_id='has space'", 422, "event_id"),
    ("set:event_id=''", 422, "event_id"),
    ("set:account_id='x'*101", 422, "account_id"),
    ("set:context=[1]", 422, "context"),
    ("set:occurred_at='last tuesday'", 422, "occurred_at"),
    ("set:surprise=1", 422, "surprise"),
    ("raw:NaN:current_value", 422, "current_value"),
    ("raw:Infinity:threshold", 422, "threshold"),
    ("raw:-Infinity:current_value", 422, "current_value"),
    ("raw:1e400:current_value", 422, "current_value"),
    ("ctx:NaN", 422, "context.deep.0"),
])
def test_bad_input_is_4xx_naming_the_field(client, raw, status, field):
    if isinstance(raw, bytes):
        body = raw
    else:
        kind, _, spec = raw.partition(":")
        payload = alert()
        if kind == "missing":
            del payload[spec]
            body = json.dumps(payload).encode()
        elif kind == "set":
            name, _, expr = spec.partition("=")
            payload[name] = eval(expr, {"true": True})  # noqa: S307 - literal test data
            body = json.dumps(payload).encode()
        elif kind == "raw":
            constant, _, name = spec.partition(":")
            body = json.dumps(payload).replace(f'"{name}": {payload[name]}', f'"{name}": {constant}').encode()
        else:
            body = json.dumps({**payload, "context": {"deep": ["__X__"]}}).replace('"__X__"', spec).encode()
    response = client.post("/alerts", content=body, headers=signed_headers(body))
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["field"] == field, answer
    assert answer["detail"].startswith(field) or field == "body"


def test_oversized_body_is_413_and_wrong_type_is_415(client):
    payload = alert(context={"pad": "x" * 70_000})
    body = json.dumps(payload).encode()
    response = client.post("/alerts", content=body, headers=signed_headers(body))
    assert response.status_code == 413 and response.json()["field"] == "body"
    body = json.dumps(alert()).encode()
    response = client.post("/alerts", content=body, headers={**signed_headers(body), "content-type": "text/plain"})
    assert response.status_code == 415 and response.json()["field"] == "content-type"


@pytest.mark.parametrize("fields, reason", [
    ({"metric_type": "login_count", "severity": "critical"}, "metric_not_eligible"),
    ({"severity": "medium", "current_value": 1000}, "below_high_value_threshold"),
    ({"severity": "low", "current_value": 999.5}, "below_high_value_threshold"),
])
def test_non_qualifying_alert_is_200_with_reason(client, fields, reason):
    payload = alert(**fields)
    response = post_alert(client, payload)
    assert response.status_code == 200, response.text
    assert response.json() == {"event_id": payload["event_id"], "triggered": False, "queued": False,
                               "duplicate": False, "reason": reason, "detail": response.json()["detail"]}
    status = get_status(client, payload["event_id"]).json()
    assert status["qualified"] is False and status["reason"] == reason
    assert runs_with_key(payload["event_id"]) == []


def test_high_value_qualifies_at_any_severity(client):
    response = post_alert(client, alert(severity="low", current_value=1000.01, threshold=500))
    assert response.status_code == 202 and response.json()["automation_level"] == "HUMAN_INTERVENTION"


def test_alert_status_endpoint(client):
    payload = alert()
    run_id = post_alert(client, payload).json()["flow_run_id"]
    status = get_status(client, payload["event_id"])
    assert status.status_code == 200, status.text
    body = status.json()
    assert body["status"] == "triggered" and body["flow_run_id"] == run_id and body["run_state"] == "Scheduled"
    assert get_status(client, "evt-never-seen").status_code == 404
    assert client.get(f"/alerts/{payload['event_id']}").status_code == 401


def test_healthz_and_docs(client):
    health = health_of(client)
    assert health["signing"] == "required" and health["spool_depth"] == 0 and health["prefect_api"] == "up"
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "severity" in json.dumps(schema["paths"]["/alerts"]["post"]["requestBody"])


# ---- exactly once ----


def test_fifty_concurrent_deliveries_make_one_run(client, deployment, prefect_server, tmp_path):
    payload = alert()
    body = json.dumps(payload).encode()

    def deliver(_: int) -> httpx.Response:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
            return own.post("/alerts", content=body, headers=signed_headers(body))

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(deliver, range(50)))
    assert all(r.status_code in (200, 202) for r in responses), [r.text for r in responses]
    answers = [r.json() for r in responses]
    assert len({a["flow_run_id"] for a in answers}) == 1
    assert sum(not a["duplicate"] for a in answers) == 1
    assert [r.status_code for r in responses].count(202) == 1
    assert len(runs_with_key(payload["event_id"])) == 1
    # a day later: a second receiver with an empty database still finds the same run (Prefect's key)
    with ReceiverThread(_settings(tmp_path, prefect_server)) as fresh, httpx.Client(base_url=fresh.url) as other:
        again = post_alert(other, payload)
        assert again.json()["flow_run_id"] == answers[0]["flow_run_id"]
    assert len(runs_with_key(payload["event_id"])) == 1


# ---- one open upsell per account, cooldown ----


def _end_run(run_id: str) -> None:
    async def end() -> None:
        async with get_client() as prefect:
            await prefect.set_flow_run_state(run_id, Cancelled(message="test: upsell ended"), force=True)

    asyncio.run(end())


def test_one_open_upsell_per_account_then_cooldown(client):
    first = alert()
    account = first["account_id"]
    run_id = post_alert(client, first).json()["flow_run_id"]

    second = alert(account_id=account, severity="critical")
    answer = post_alert(client, second)
    assert answer.status_code == 200
    assert answer.json() | {"detail": ""} == {
        "event_id": second["event_id"], "triggered": False, "queued": False, "duplicate": False,
        "flow_run_id": run_id, "reason": "open_upsell", "open_event_id": first["event_id"], "detail": "",
    }
    assert runs_with_key(second["event_id"]) == []
    assert get_status(client, second["event_id"]).json()["status"] == "attached"
    with get_client(sync_client=True) as prefect:  # the alert is recorded on the open run itself
        recorded = prefect.read_flow_run_input(UUID(run_id), attached_key(second["event_id"]))
    assert json.loads(recorded)["severity"] == "critical"

    _end_run(run_id)
    third = alert(account_id=account)
    answer = post_alert(client, third).json()
    assert answer["triggered"] is False and answer["reason"] == "cooldown", answer
    assert post_alert(client, third).json()["duplicate"] is True  # the repeat gets the same answer

    time.sleep(2.1)  # this receiver's cooldown is 2 s
    fourth = alert(account_id=account)
    answer = post_alert(client, fourth).json()
    assert answer["triggered"] is True and answer["flow_run_id"] != run_id
