"""Playbooks in real runs: the level, variant and follow-up a playbook sets, the send window that holds an email
until the contact's business hours, and the receiver's level, cooldown, tag and parameter from the playbook."""

from __future__ import annotations

import email
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path
from uuid import UUID
from zoneinfo import ZoneInfo

import httpx
import pytest
from prefect.client.orchestration import get_client

from blocks.mongo import SqliteOpportunityStore
from flows.models import EXPIRED_WAIT_INPUT, AutomationLevel, CustomerReply, UsageAlert
from flows.playbooks import parse_playbooks
from flows.upsell import upsell
from tasks.close_expired_waits import expired_waits
from tests.support import find_run_id, read_run, resume, wait_until_paused
from tests.test_stage_artifact import latest_artifact
from tests.test_webhook_support import SECRET, alert, post_alert, runs_with_key
from webhook.serve import ReceiverThread
from webhook.settings import ReceiverSettings

#: Account 12345 of the CRM fixtures: contact in America/New_York.
ACCOUNT, ZONE = "12345", ZoneInfo("America/New_York")


def _alert(event_id: str) -> UsageAlert:
    return UsageAlert(event_id=event_id, account_id=ACCOUNT, metric_type="trade_volume", current_value=150,
                      threshold=100, severity="critical")  # fmt: skip


def _messages(data_dir: Path) -> list[email.message.EmailMessage]:
    files = sorted((data_dir / "outbox").glob("*.eml"), key=lambda p: p.stat().st_mtime)
    return [email.message_from_bytes(p.read_bytes(), policy=policy.default) for p in files]  # type: ignore[misc]


def _expire(run_id: UUID, kind: str) -> None:
    """What the reply-timeouts sweep sends when the wait's deadline passed (it lists the run first)."""
    deadline = time.monotonic() + 30
    while not any(run.id == run_id and k == kind for run, k, _ in expired_waits(datetime.now(UTC))):
        assert time.monotonic() < deadline, f"the sweep would not close the {kind} wait"
        time.sleep(0.5)
    with get_client(sync_client=True) as client:
        client.resume_flow_run(run_id, run_input=EXPIRED_WAIT_INPUT[kind])


def _playbooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    path = tmp_path / "playbooks.yaml"
    path.write_text(text)
    parse_playbooks(text)  # valid
    monkeypatch.setenv("UPSELL_PLAYBOOKS_FILE", str(path))


FOLLOW_UP = """\
playbooks:
  - name: growth-trading
    segment: {plans: [Growth], metrics: [trade_volume]}
    follow_up: {after_hours: 0.001}
    variants:
      - {name: direct, weight: 1, subject: "{company}: a quick question", template: upsell_short}
      - {name: detailed, weight: 1}
"""


def test_no_reply_gets_one_follow_up_in_the_thread_and_the_variant_is_recorded(
    tmp_path: Path, data_dir: Path, event_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _playbooks(tmp_path, monkeypatch, FOLLOW_UP)
    alert = _alert(event_id)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(upsell, alert, reply_timeout_s=600)
        run_id = find_run_id(alert.run_name)
        wait_until_paused(run_id, "reply")
        assert len(_messages(data_dir)) == 1
        _expire(run_id, "reply")  # no answer after the playbook's delay (3.6 s)
        wait_until_paused(run_id, "follow-up-reply")
        first, follow_up = _messages(data_dir)
        assert follow_up["In-Reply-To"] == first["Message-ID"]
        assert first["Message-ID"] in follow_up["References"]
        assert follow_up["Subject"] == f"Re: {first['Subject']}"
        run = read_run(run_id)
        resume(run_id, "reply", {"reply": "yes"})  # a reply link answers the wait after the follow-up too
        outcome = future.result(timeout=60)
    assert outcome.reply is CustomerReply.YES
    assert len(_messages(data_dir)) == 2  # the follow-up went once
    logged = SqliteOpportunityStore(data_dir / "upsell.db").get_opportunity(event_id)
    assert logged is not None and logged.playbook == "growth-trading" and logged.follow_up_sent
    assert logged.variant in ("direct", "detailed")
    assert {"playbook:growth-trading", f"variant:{logged.variant}"} <= set(run.tags)
    assert run.parameters["playbook"] == "growth-trading"
    if logged.variant == "direct":
        assert first["Subject"] == "Acme Trading Ltd: a quick question"


def test_a_reply_before_the_delay_means_no_follow_up(
    tmp_path: Path, data_dir: Path, event_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _playbooks(tmp_path, monkeypatch, FOLLOW_UP.replace("0.001", "1"))
    alert = _alert(event_id)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(upsell, alert, reply_timeout_s=7200)
        run_id = find_run_id(alert.run_name)
        wait_until_paused(run_id, "reply")
        resume(run_id, "reply", {"reply": "no"})
        outcome = future.result(timeout=60)
    assert outcome.reply is CustomerReply.NO
    assert len(_messages(data_dir)) == 1
    logged = SqliteOpportunityStore(data_dir / "upsell.db").get_opportunity(event_id)
    assert logged is not None and not logged.follow_up_sent


def test_an_email_outside_the_send_window_waits_for_it_and_the_playbook_sets_the_level(
    tmp_path: Path, data_dir: Path, event_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = datetime.now(ZONE)
    if local.hour == 23 and local.minute >= 58:
        pytest.skip("the window would cross midnight")
    start = (local + timedelta(seconds=6)).time().replace(microsecond=0)
    end = min((local + timedelta(hours=1)).time(), datetime.max.time()) if local.hour < 23 else datetime.max.time()
    _playbooks(tmp_path, monkeypatch, f"""\
playbooks:
  - name: business-hours
    segment: {{metrics: [trade_volume]}}
    automation_level: HYBRID
    send_window: {{start: "{start.isoformat()}", end: "{end.replace(microsecond=0).isoformat()}",
                   weekdays: [0, 1, 2, 3, 4, 5, 6], skip_public_holidays: false}}
""")
    alert = _alert(event_id)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(upsell, alert, reply_timeout_s=600)
        run_id = find_run_id(alert.run_name)
        wait_until_paused(run_id, "send-window")
        assert _messages(data_dir) == []  # held: nothing sent before the window opens
        table = latest_artifact(alert).data
        assert "| Send window | waiting |" in table and "sends at" in table, table
        _expire(run_id, "send-window")  # the window opened: the sweep answers the wait
        wait_until_paused(run_id, "reply")
        sent_at = datetime.now(ZONE)
        assert len(_messages(data_dir)) == 1 and sent_at.time() >= start
        resume(run_id, "reply", {"reply": "no"})
        wait_until_paused(run_id, "review")  # HYBRID from the playbook: a human reviews after the reply
        resume(run_id, "review", {"approved": False, "estimated_value": 0, "note": "not now"})
        outcome = future.result(timeout=60)
    assert outcome.automation_level is AutomationLevel.HYBRID


def test_the_receiver_takes_the_level_cooldown_and_playbook_from_the_alerts_playbook(
    tmp_path: Path, prefect_server: str
) -> None:
    from tests.test_webhook_alerts import DEPLOYMENT

    upsell.to_deployment(name="receiver-tests", enforce_parameter_schema=True).apply()
    playbooks = tmp_path / "playbooks.yaml"
    playbooks.write_text("""\
playbooks:
  - name: enterprise
    segment: {plans: [Enterprise], metrics: [trade_value]}
    automation_level: FULL_AUTOMATION
  - name: api-human
    segment: {metrics: [balance_change]}
    automation_level: HUMAN_INTERVENTION
    cooldown_hours: 0
""")
    settings = ReceiverSettings(
        webhook_secrets=[SECRET], data_dir=tmp_path, receiver_db=tmp_path / "receiver.db",
        prefect_api_url=prefect_server, deployment_name=DEPLOYMENT, cooldown_s=3600, prefect_timeout_s=10,
        playbooks_file=playbooks,
    )  # fmt: skip
    with ReceiverThread(settings) as receiver, httpx.Client(base_url=receiver.url, timeout=30) as http:
        first = alert(metric_type="balance_change", severity="critical")
        answer = post_alert(http, first).json()
        assert answer["triggered"] and answer["automation_level"] == "HUMAN_INTERVENTION"
        (run,) = runs_with_key(first["event_id"])
        assert run.parameters["playbook"] == "api-human"
        assert run.parameters["automation_level"] == "HUMAN_INTERVENTION"
        assert {"playbook:api-human", "level:HUMAN_INTERVENTION"} <= set(run.tags)

        from prefect.states import Cancelled

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Cancelled(message="test: upsell ended"), force=True)
        again = post_alert(http, alert(account_id=first["account_id"], metric_type="balance_change")).json()
        assert again["triggered"], again  # the playbook's cooldown is 0 h (the receiver's is 1 h)

        # a plan segment comes first for trade value alerts: only the contract decides, so the run chooses itself
        storage = alert(metric_type="trade_value", severity="critical")
        assert post_alert(http, storage).json()["triggered"]
        (run,) = runs_with_key(storage["event_id"])
        assert "playbook" not in run.parameters and "automation_level" not in run.parameters


def test_a_follow_up_due_outside_the_send_window_waits_for_it(
    tmp_path: Path, data_dir: Path, event_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = datetime.now(ZONE)
    if local.hour == 23 and local.minute >= 58:
        pytest.skip("the window would cross midnight")
    start, end = datetime.min.time(), (local + timedelta(seconds=10)).time().replace(microsecond=0)
    _playbooks(tmp_path, monkeypatch, f"""\
playbooks:
  - name: short-window
    segment: {{metrics: [trade_volume]}}
    follow_up: {{after_hours: 0.001}}
    send_window: {{start: "{start.isoformat()}", end: "{end.isoformat()}", weekdays: [0, 1, 2, 3, 4, 5, 6],
                   skip_public_holidays: false}}
""")
    alert = _alert(event_id)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(upsell, alert, reply_timeout_s=600)
        run_id = find_run_id(alert.run_name)
        wait_until_paused(run_id, "reply")  # the first email went out inside the window
        assert len(_messages(data_dir)) == 1
        while datetime.now(ZONE).time() < end:  # the window closes
            time.sleep(0.5)
        _expire(run_id, "reply")
        wait_until_paused(run_id, "follow-up-window")  # the follow-up waits for the next opening (tomorrow)
        assert len(_messages(data_dir)) == 1
        table = latest_artifact(alert).data
        assert "| Follow-up send window | waiting |" in table and "sends at" in table, table
        resume(run_id, "follow-up-window", {"note": "send it now", "reviewer": "Kim"})  # a person sends it now
        wait_until_paused(run_id, "follow-up-reply")
        assert len(_messages(data_dir)) == 2
        resume(run_id, "reply", {"reply": "maybe"})
        assert future.result(timeout=60).reply is CustomerReply.MAYBE
