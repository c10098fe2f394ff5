"""The funnel report against real runs: a known mix of endings (won, declined, no answer, bounced, a 'maybe'
rejected after the reply, an email rejected before it went out), some triggered through the receiver and some from
the CLI, and every figure of the report checked, with no stage above the one before it."""

from __future__ import annotations

import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from blocks.mongo import SqliteOpportunityStore
from deployments.report import load_report
from flows.models import AutomationLevel, UpsellStatus, UsageAlert
from flows.report import Funnel, FunnelReport, funnel_stages
from flows.upsell import upsell
from tests.support import find_run_id, resume, wait_until_paused
from webhook.store import ReceiverStore

FULL, HYBRID, HUMAN = AutomationLevel.FULL_AUTOMATION, AutomationLevel.HYBRID, AutomationLevel.HUMAN_INTERVENTION
#: name: (level, the waits answered in order, whether the receiver took the alert in; else the CLI triggered it)
MIX: dict[str, tuple[AutomationLevel, list[tuple[str, dict[str, Any]]], bool]] = {
    "won": (FULL, [("reply", {"reply": "yes"})], True),
    "declined": (FULL, [("reply", {"reply": "no"})], True),
    "silent": (FULL, [("reply", {})], False),  # the reply-timeouts sweep's answer: no reply
    "bounced": (FULL, [("reply", {"delivery": "bounced"})], False),
    "maybe-rejected": (HYBRID, [("reply", {"reply": "maybe"}), ("review", {"approved": False, "estimated_value": 0,
                                                                           "note": "not this quarter"})], True),
    "email-rejected": (HUMAN, [("approve-email", {"approved": False, "note": "wrong tone"})], True),
}


def check_stages(report: FunnelReport) -> None:
    """No stage of the funnel exceeds the stage it is a share of, in total and in every week."""
    for stage in funnel_stages(report):
        assert stage.of is None or stage.count <= stage.of.count, (stage.label, stage.count, stage.of.label)
    for week in report.weeks:
        assert week.alerts >= week.qualified >= week.opportunities >= week.emailed
        assert week.yes + week.no + week.maybe + week.no_reply == week.emailed and week.meetings <= week.yes


def run_the_mix(data_dir: Path) -> dict[str, str]:
    """Run the mix for real (direct flow calls, waits answered through the API); the event id of each."""
    ids = {name: f"evt-{uuid.uuid4().hex[:12]}" for name in MIX}
    receiver = ReceiverStore(data_dir / "receiver.db")  # what the receiver records of each alert it triggers
    try:
        for name, (level, _, received) in MIX.items():
            if received:
                receiver.insert_alert(event_id=ids[name], account_id=f"acct-{name}", payload="{}",
                                      automation_level=level.value, qualified=True, status="triggered")
        receiver.insert_alert(event_id=f"evt-{uuid.uuid4().hex[:12]}", account_id="acct-small", payload="{}",
                              automation_level=None, qualified=False, status="not_qualified")
    finally:
        receiver.close()
    with ThreadPoolExecutor(max_workers=len(MIX)) as pool:
        runs: dict[str, tuple[Future[Any], str]] = {}
        for name, (level, _, _) in MIX.items():
            alert = UsageAlert(event_id=ids[name], account_id=f"acct-{name}", metric_type="trade_volume",
                               current_value=150, threshold=100)
            runs[name] = pool.submit(upsell, alert, automation_level=level, approval_timeout_s=120), ""
            runs[name] = runs[name][0], str(find_run_id(alert.run_name))
        for name, (_, waits, _) in MIX.items():
            for kind, answer in waits:
                wait_until_paused(runs[name][1], kind)
                resume(runs[name][1], kind, answer)
        outcomes = {name: future.result(timeout=120) for name, (future, _) in runs.items()}
    assert {name: o.status for name, o in outcomes.items()} == {
        "won": UpsellStatus.COMPLETED, "declined": UpsellStatus.COMPLETED, "silent": UpsellStatus.COMPLETED,
        "bounced": UpsellStatus.BOUNCED, "maybe-rejected": UpsellStatus.REJECTED,
        "email-rejected": UpsellStatus.REJECTED}
    assert [name for name, o in outcomes.items() if o.email_sent] == list(MIX)[:5]
    return ids


def test_the_report_counts_every_ending_of_real_runs(data_dir: Path) -> None:
    ids = run_the_mix(data_dir)
    report = load_report(datetime.now(UTC).date())
    store = SqliteOpportunityStore(data_dir / "upsell.db")
    try:
        logged = {name: store.get_opportunity(event_id) for name, event_id in ids.items()}
    finally:
        store.close()
    # every ending logged its record: the rejected ones too, with the email and the answer they had
    assert all(record is not None for record in logged.values())
    won, maybe = logged["won"], logged["maybe-rejected"]
    assert won is not None and maybe is not None and maybe.reply == "maybe" and maybe.email_message_id

    # 5 alerts through the receiver (one not qualified) and 2 upsells triggered from the CLI
    assert (report.alerts, report.qualified, report.alerts_elsewhere) == (7, 6, 2)
    assert report.total == Funnel(opportunities=6, emailed=5, yes=1, no=1, maybe=1, no_reply=2, meetings=1,
                                  pipeline_value=won.estimated_value)  # the rejected 'maybe' adds no value
    assert [(s.label, s.count) for s in funnel_stages(report)] == [
        ("Alerts", 7), ("Qualified", 6), ("Upsells logged", 6), ("Emailed", 5), ("Answered yes", 1),
        ("Answered no", 1), ("Answered maybe", 1), ("No answer", 2), ("Meetings", 1)]
    [week] = [w for w in report.weeks if w.alerts]
    assert (week.alerts, week.qualified) == (7, 6)
    assert Funnel.model_validate(week.model_dump()) == report.total
    assert [(p.playbook, p.opportunities, p.emailed) for p in report.playbooks] == [(won.playbook, 6, 5)]
    assert any("2 of the alerts were triggered outside the receiver" in note for note in report.notes)
    check_stages(report)
