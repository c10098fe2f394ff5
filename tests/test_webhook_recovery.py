"""The receiver loses nothing when it dies: alerts left undecided are replayed at start (found by Prefect's
idempotency key, or created), an error after the insert spools the alert, and a one-click unsubscribe is
recorded while Prefect is down and applied once it is back, the token checked before any store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prefect.client.orchestration import get_client

from blocks.mongo import SqliteOpportunityStore
from flows.api import create_upsell_run, deployment_id_for
from flows.models import AutomationLevel, UsageAlert
from flows.upsell import upsell
from tasks.runtime.links import LinkToken, link_for
from tests.fakes.server import serve_in_thread
from tests.test_webhook_support import REPORT_TOKEN, SECRET, alert, get_status, health_of, post_alert, runs_with_key
from webhook.ports import free_port
from webhook.routes.links import UNSUBSCRIBE_APPLY_S
from webhook.serve import ReceiverThread
from webhook.settings import ReceiverSettings
from webhook.store import ReceiverStore

DEPLOYMENT = "upsell/recovery-tests"  # not served: its runs stay Scheduled and cost nothing


@pytest.fixture(scope="module")
def deployment(prefect_server: str) -> str:
    upsell.to_deployment(name="recovery-tests", enforce_parameter_schema=True).apply()
    return DEPLOYMENT


def _settings(tmp: Path, api_url: str, **fields: Any) -> ReceiverSettings:
    return ReceiverSettings(
        webhook_secrets=SECRET, data_dir=tmp, receiver_db=tmp / "receiver.db", prefect_api_url=api_url,
        deployment_name=DEPLOYMENT, prefect_timeout_s=3, dispatch_interval_s=0.2, report_token=REPORT_TOKEN,
        **fields,
    )  # fmt: skip


def _until(check: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.1)


def _left_received(store: ReceiverStore, payload: dict[str, Any]) -> None:
    """The row a receiver leaves when it dies while creating the run: inserted, `received`, never decided."""
    parsed = UsageAlert.model_validate(payload)
    store.insert_alert(event_id=parsed.event_id, account_id=parsed.account_id, payload=parsed.model_dump_json(),
                       automation_level="HYBRID", qualified=True, status="received")  # fmt: skip


def test_alerts_left_received_by_a_dead_receiver_become_exactly_one_run_each(
    deployment: str, prefect_server: str, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, prefect_server)
    store = ReceiverStore(settings.receiver_db_path)
    never_created, created_before_death = alert(), alert()
    _left_received(store, never_created)
    _left_received(store, created_before_death)

    async def create_the_run_the_dead_process_created() -> str:
        async with get_client() as client:
            deployment_id = await deployment_id_for(client, DEPLOYMENT)
            run = await create_upsell_run(client, UsageAlert.model_validate(created_before_death),
                                          AutomationLevel.HYBRID, deployment_name=DEPLOYMENT,
                                          deployment_id=deployment_id)  # fmt: skip
            return str(run.id)

    existing = asyncio.run(create_the_run_the_dead_process_created())
    store.close()

    with ReceiverThread(settings) as receiver, httpx.Client(base_url=receiver.url, timeout=30) as http:
        _until(lambda: health_of(http)["spool_depth"] == 0)
        first = get_status(http, never_created["event_id"]).json()
        second = get_status(http, created_before_death["event_id"]).json()

    assert first["status"] == "triggered" and second["status"] == "triggered"
    assert [str(r.id) for r in runs_with_key(never_created["event_id"])] == [first["flow_run_id"]]
    assert [str(r.id) for r in runs_with_key(created_before_death["event_id"])] == [existing]  # found, not doubled
    assert second["flow_run_id"] == existing


def test_an_unexpected_error_after_the_insert_spools_the_alert(tmp_path: Path) -> None:
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
    async def garbage(path: str) -> PlainTextResponse:  # a "Prefect API" whose answers are not JSON
        return PlainTextResponse("<html>not an API</html>")

    url, stop = serve_in_thread(app)
    try:
        settings = _settings(tmp_path, f"{url}/api")
        with ReceiverThread(settings) as receiver, httpx.Client(base_url=receiver.url, timeout=30) as http:
            payload = alert()
            response = post_alert(http, payload)
            status = get_status(http, payload["event_id"]).json()
    finally:
        stop()

    assert response.status_code == 202 and response.json()["queued"] is True, response.text
    assert status["status"] == "queued"  # in the spool, replayed when the API answers again, never forgotten
    row = ReceiverStore(settings.receiver_db_path).get(payload["event_id"])
    assert row is not None and row["status"] == "queued" and row["attempts"] >= 1
    assert row["last_error"].startswith(("deciding the alert failed", "replay failed: JSONDecodeError"))


def _unsubscribe_link(settings: ReceiverSettings, base: str, email: str) -> str:
    token = LinkToken(flow_run_id="run-1", wait="unsubscribe", value={"email": email},
                      expires_at=int(time.time()) + 3600, nonce="evt-unsub")  # fmt: skip
    return link_for(base, settings.link_secret.get_secret_value(), token, route="unsubscribe")


def test_an_unsubscribe_is_kept_while_prefect_is_down_and_applied_when_it_is_back(
    prefect_server: str, tmp_path: Path
) -> None:
    email = "dana.unsubscribe@customer.example.com"
    down = _settings(tmp_path, f"http://127.0.0.1:{free_port()}/api")  # nothing listens there
    with ReceiverThread(down) as receiver, httpx.Client(base_url=receiver.url, timeout=30) as http:
        link = _unsubscribe_link(down, receiver.url, email)
        started = time.monotonic()
        answer = http.post(link, content=b"List-Unsubscribe=One-Click",
                           headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
        took = time.monotonic() - started
        forged = http.post(link[:-3] + "xyz", content=b"List-Unsubscribe=One-Click")
        garbage = http.post("/unsubscribe/garbage", content=b"List-Unsubscribe=One-Click")

    assert answer.status_code == 200 and "You are unsubscribed" in answer.text, answer.text
    assert took < UNSUBSCRIBE_APPLY_S + 1.5  # recorded on the receiver's own disk; no wait for Prefect's retries
    assert (forged.status_code, garbage.status_code) == (403, 403)  # the token first, not a 503
    assert [r["email"] for r in ReceiverStore(down.receiver_db_path).pending_unsubscribes()] == [email]
    suppressions = SqliteOpportunityStore(tmp_path / "upsell.db")  # the local stand-in the sends check
    assert not suppressions.is_suppressed(email)

    back = _settings(tmp_path, prefect_server)
    with ReceiverThread(back):
        _until(lambda: not ReceiverStore(back.receiver_db_path).pending_unsubscribes())
    assert suppressions.is_suppressed(email)


def test_an_open_upsell_whose_process_died_no_longer_takes_alerts_and_its_cooldown_starts(
    deployment: str, prefect_server: str, tmp_path: Path
) -> None:
    from prefect.states import Running

    settings = _settings(tmp_path, prefect_server, dead_after_s=1.0)
    first = alert()
    account = {"account_id": first["account_id"]}
    with ReceiverThread(settings) as receiver, httpx.Client(base_url=receiver.url, timeout=30) as http:
        started = post_alert(http, first).json()
        assert started["triggered"], started
        run_id = started["flow_run_id"]
        with get_client(sync_client=True) as client:  # a runner took it, then died (no heartbeat ever comes)
            client.set_flow_run_state(run_id, Running(), force=True)
        while_alive = post_alert(http, alert(**account)).json()
        time.sleep(1.3)
        once_dead = post_alert(http, alert(**account)).json()

    assert (while_alive["reason"], while_alive["flow_run_id"]) == ("open_upsell", run_id)
    assert once_dead["reason"] == "cooldown", once_dead  # not attached to a run that will not go on
    assert "cooldown until" in once_dead["detail"]
