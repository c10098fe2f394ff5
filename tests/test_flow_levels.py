"""Each automation level end to end through the real pause/resume of a direct flow call."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest

from blocks.mongo import SqliteOpportunityStore
from flows.models import AutomationLevel, UpsellOutcome, UpsellStatus, UsageAlert
from flows.reply_timeouts import reply_timeouts
from flows.upsell import upsell
from tests.support import find_run_id, outbox_emails, resume, task_runs, wait_until_paused


def alert_for(event_id: str, severity: str = "high", account_id: str = "12345") -> UsageAlert:
    return UsageAlert(
        event_id=event_id, account_id=account_id, metric_type="trade_volume",
        current_value=150, threshold=100, severity=severity,
    )


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def start(pool: ThreadPoolExecutor, alert: UsageAlert, **params) -> tuple[Future, str]:
    future = pool.submit(upsell, alert, **params)
    return future, str(find_run_id(alert.run_name))


def emails(data_dir: Path, event_id: str) -> list:
    return [
        BytesParser(policy=policy.default).parse(p.open("rb")) for p in outbox_emails(data_dir / "outbox", event_id)
    ]


def test_full_automation_needs_no_human_but_the_customer(pool, data_dir, event_id):
    future, run_id = start(pool, alert_for(event_id, "critical"))
    wait_until_paused(run_id, "reply")
    resume(run_id, "reply", {"reply": "yes"})
    outcome: UpsellOutcome = future.result(timeout=60)
    assert outcome.automation_level is AutomationLevel.FULL_AUTOMATION
    assert outcome.status is UpsellStatus.COMPLETED and outcome.reply == "yes"
    assert outcome.meeting is not None and outcome.meeting.join_url
    assert outcome.opportunity_id == f"opp_12345_{event_id}"
    assert outcome.planner == "rule-based" and set(outcome.standins) >= {"email", "planner", "store"}
    store = SqliteOpportunityStore(data_dir / "upsell.db")
    logged = store.get_opportunity(event_id)
    assert logged is not None and logged.meeting_join_url == outcome.meeting.join_url
    assert logged.email_message_id == emails(data_dir, event_id)[0]["Message-ID"]
    waits = {r.name.rsplit("-", 1)[0] for r in task_runs(run_id)}
    assert {"fetch_usage", "fetch_contract", "ask_claude_for_plan", "send_email_draft", "post_slack_summary",
            "create_zoom_meeting", "log_opportunity"} <= waits


def test_hybrid_review_can_change_the_value_and_no_meeting_without_yes(pool, data_dir, event_id):
    future, run_id = start(pool, alert_for(event_id, "high"))
    wait_until_paused(run_id, "reply")
    resume(run_id, "reply", {"reply": "maybe"})
    wait_until_paused(run_id, "review")
    resume(run_id, "review", {"approved": True, "estimated_value": 1234.5, "note": "checked"})
    outcome = future.result(timeout=60)
    assert outcome.automation_level is AutomationLevel.HYBRID
    assert outcome.reply == "maybe" and outcome.meeting is None
    logged = SqliteOpportunityStore(data_dir / "upsell.db").get_opportunity(event_id)
    assert logged.estimated_value == 1234.5 and logged.reviewer_note == "checked"


def test_hybrid_rejection_ends_completed_with_status_rejected(pool, data_dir, event_id):
    future, run_id = start(pool, alert_for(event_id, "high"))
    wait_until_paused(run_id, "reply")
    resume(run_id, "reply", {"reply": "yes"})
    wait_until_paused(run_id, "review")
    resume(run_id, "review", {"approved": False, "estimated_value": 0, "note": "not now"})
    outcome = future.result(timeout=60)
    assert outcome.status is UpsellStatus.REJECTED and outcome.meeting is None and outcome.opportunity_id is not None
    logged = SqliteOpportunityStore(data_dir / "upsell.db").get_opportunity(event_id)  # logged, for the report
    assert logged.status is UpsellStatus.REJECTED and logged.reply == "yes" and logged.email_message_id is not None


def test_human_intervention_approves_each_outward_step_with_edited_email(pool, data_dir, event_id):
    future, run_id = start(pool, alert_for(event_id, "low"))
    wait_until_paused(run_id, "approve-email")
    assert emails(data_dir, event_id) == []  # nothing goes out before the approval
    resume(run_id, "approve-email", {"approved": True, "subject": "Edited subject", "body_text": "Edited body."})
    wait_until_paused(run_id, "reply")
    sent = emails(data_dir, event_id)
    assert len(sent) == 1 and sent[0]["Subject"] == "Edited subject"
    assert "Edited body." in sent[0].get_body(("plain",)).get_content()
    html = sent[0].get_body(("html",)).get_content()
    assert "<p>Edited body.</p>" in html and html.count("/links/") == 3  # the answer buttons added around the edit
    resume(run_id, "reply", {"reply": "yes"})
    wait_until_paused(run_id, "approve-meeting")
    resume(run_id, "approve-meeting", {"approved": True})
    wait_until_paused(run_id, "approve-opportunity")
    resume(run_id, "approve-opportunity", {"approved": True, "estimated_value": 999.0})
    outcome = future.result(timeout=60)
    assert outcome.automation_level is AutomationLevel.HUMAN_INTERVENTION
    assert outcome.status is UpsellStatus.COMPLETED and outcome.meeting is not None


def test_an_approval_that_changes_only_the_subject_sends_the_drafted_html(pool, data_dir, event_id):
    future, run_id = start(pool, alert_for(event_id, "low"))
    wait_until_paused(run_id, "approve-email")
    resume(run_id, "approve-email", {"approved": True, "subject": "Only the subject changed"})
    wait_until_paused(run_id, "reply")
    [sent] = emails(data_dir, event_id)
    html, text = sent.get_body(("html",)).get_content(), sent.get_body(("plain",)).get_content()
    assert sent["Subject"] == "Only the subject changed"
    assert "<strong>" in html and "<ul><li>" in html and html.count('href="http') == 4  # 3 answer buttons, unsubscribe
    assert "Maybe later" in html and "Maybe later" in text
    assert "trade_volume" not in html + text and "trade volume" in text  # the metric in words
    resume(run_id, "reply", {"reply": "no"})
    wait_until_paused(run_id, "approve-opportunity")
    resume(run_id, "approve-opportunity", {"approved": False, "estimated_value": 0})
    assert future.result(timeout=60).status is UpsellStatus.REJECTED


def test_human_rejection_of_the_email_sends_nothing(pool, data_dir, event_id):
    future, run_id = start(pool, alert_for(event_id, "medium"))
    wait_until_paused(run_id, "approve-email")
    resume(run_id, "approve-email", {"approved": False, "note": "wrong tone"})
    outcome = future.result(timeout=60)
    assert outcome.status is UpsellStatus.REJECTED and not outcome.email_sent
    assert outcome.reviewer_note == "wrong tone" and emails(data_dir, event_id) == []


def test_reply_timeout_is_a_normal_completed_outcome(pool, data_dir, event_id):
    future, run_id = start(pool, alert_for(event_id, "critical"), reply_timeout_s=1.0)
    wait_until_paused(run_id, "reply")
    closed: list[str] = []
    for _ in range(20):  # the sweep closes the wait once its 1 s deadline has passed
        closed = reply_timeouts()
        if run_id in closed:
            break
        import time

        time.sleep(0.5)
    assert run_id in closed
    outcome = future.result(timeout=60)
    assert outcome.status is UpsellStatus.COMPLETED and outcome.reply == "no_reply" and outcome.meeting is None
