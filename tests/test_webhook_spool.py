"""Never lose an alert: with the Prefect API stopped, alerts are spooled (SQLite WAL) and answered 202 queued;
a receiver restart keeps them; when the API is started again the dispatcher replays them, once each."""

from __future__ import annotations

import time

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterIdempotencyKey
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.upsell import upsell
from tests.test_webhook_support import REPORT_TOKEN, SECRET, PrefectServer, alert, get_status, health_of, post_alert
from webhook.ports import free_port
from webhook.serve import ReceiverThread
from webhook.settings import ReceiverSettings


def _runs(api_url: str, event_id: str) -> list:
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(
            idempotency_key=FlowRunFilterIdempotencyKey(any_=[f"upsell:{event_id}"])))


def test_spool_survives_api_outage_and_receiver_restart(tmp_path):
    server = PrefectServer(tmp_path / "prefect", free_port())
    server.start()
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            upsell.to_deployment(name="spool-tests").apply()
        settings = ReceiverSettings(
            webhook_secrets=SECRET, data_dir=tmp_path, receiver_db=tmp_path / "receiver.db",
            prefect_api_url=server.api_url, deployment_name="upsell/spool-tests",
            prefect_timeout_s=2, dispatch_interval_s=0.3, report_token=REPORT_TOKEN,
        )
        before = alert()
        spooled = [alert(), alert(), alert(severity="critical")]
        with ReceiverThread(settings) as receiver, httpx.Client(base_url=receiver.url, timeout=30) as http:
            assert post_alert(http, before).status_code == 202

            server.stop()
            answers = [post_alert(http, payload) for payload in spooled]
            assert [a.status_code for a in answers] == [202, 202, 202], [a.text for a in answers]
            assert all(a.json()["queued"] is True and "flow_run_id" not in a.json() for a in answers)
            repeat = post_alert(http, spooled[0]).json()
            assert repeat["queued"] is True and repeat["duplicate"] is True
            health = health_of(http)
            assert health["spool_depth"] == 3 and health["prefect_api"] == "down"
            assert get_status(http, spooled[0]["event_id"]).json()["status"] == "queued"

        # the receiver restarts while the API is still down: the spool is on disk
        with ReceiverThread(settings) as receiver, httpx.Client(base_url=receiver.url, timeout=30) as http:
            assert health_of(http)["spool_depth"] == 3
            server.start()
            deadline = time.monotonic() + 30
            while health_of(http)["spool_depth"] and time.monotonic() < deadline:
                time.sleep(0.2)
            assert health_of(http) | {"prefect_api_url": ""} == {
                "status": "up", "signing": "required", "spool_depth": 0, "prefect_api": "up",
                "prefect_api_url": ""}
            for payload in spooled:
                status = get_status(http, payload["event_id"]).json()
                runs = _runs(server.api_url, payload["event_id"])
                assert status["status"] == "triggered" and [str(r.id) for r in runs] == [status["flow_run_id"]]
            again = post_alert(http, spooled[1]).json()
            assert again["duplicate"] is True and again["triggered"] is True
        assert len(_runs(server.api_url, spooled[1]["event_id"])) == 1
    finally:
        server.stop()
