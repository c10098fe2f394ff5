"""Kills at the worst moments: the fault hook (`UPSELL_FAULTS`) SIGKILLs the process running an upsell just
before or just after an outward call, and the serving process is SIGKILLed mid-run. The recovery sweep runs
the upsell again: nothing is sent twice, and every send whose outcome is unknown is flagged for a human."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Scheduled

from flows.api import create_upsell_run
from flows.models import AutomationLevel, UpsellOutcome, UsageAlert
from flows.recovery import upsell_recovery
from tasks.runtime.faults import FAULTS_ENV, all_points, kills_at, random_point
from tests.conftest import Runner
from tests.support import outbox_emails, read_run, resume, wait_until_final, wait_until_paused


def _alert() -> UsageAlert:
    key = uuid.uuid4().hex[:10]
    return UsageAlert(event_id=f"evt-fault-{key}", account_id=f"acct-fault-{key}", metric_type="trade_volume",
                      current_value=150, threshold=100, severity="critical")  # fmt: skip


def test_the_hook_kills_only_at_the_points_it_names() -> None:
    assert kills_at("send_email_draft:before", "send_email_draft", "before", "e1")
    assert not kills_at("send_email_draft:before", "send_email_draft", "after", "e1")
    assert not kills_at("send_email_draft:before", "post_slack_summary", "before", "e1")
    assert kills_at("*:after", "create_zoom_meeting", "after", "e1")
    assert kills_at(" post_slack_summary:* , x:y", "post_slack_summary", "before", "e1")
    assert not kills_at("", "send_email_draft", "before", "e1")
    # random:SEED kills each event at exactly one point, the same one every time, and spreads events over all
    chosen = [random_point("7", f"evt-{i}") for i in range(120)]
    assert set(chosen) == set(all_points())
    for i, point in enumerate(chosen[:20]):
        step, when = point.split(":")
        hits = [p for p in all_points() if kills_at("random:7", *p.split(":"), f"evt-{i}")]  # type: ignore[misc]
        assert hits == [point] and kills_at("random:7", step, when, f"evt-{i}")  # type: ignore[arg-type]


def _records(data_dir: Path, event_id: str) -> dict[str, tuple[str, int]]:
    with sqlite3.connect(data_dir / "upsell.db") as db:
        rows = db.execute("SELECT step, status, attempts FROM idempotency WHERE event_id=?", (event_id,)).fetchall()
    return {step: (status, attempts) for step, status, attempts in rows}


def _calls(data_dir: Path, name: str, account: str) -> int:
    """Calls the local Slack or Zoom stand-in received (one line per call: a second call would show)."""
    path = data_dir / name
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(1 for line in lines if account in json.dumps(json.loads(line)))


@pytest.fixture(scope="module")
def faulty(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    """A serving process of its own (`upsell/upsell-faults`, threads), restarted with the hook set per test (each
    test kills it first, so it is not waited for here)."""
    served = Runner(prefect_server, tmp_path_factory.mktemp("faults") / "data", name_suffix="faults")
    try:
        yield served
    finally:
        served.stop()


@pytest.mark.parametrize(
    ("point", "flagged", "sent"),
    [
        ("send_email_draft:after", "email", {"eml": 1, "slack.jsonl": 1, "meetings.jsonl": 0}),
        ("post_slack_summary:before", "Slack summary", {"eml": 1, "slack.jsonl": 0, "meetings.jsonl": 1}),
        ("create_zoom_meeting:after", "Zoom meeting", {"eml": 1, "slack.jsonl": 1, "meetings.jsonl": 1}),
    ],
)
def test_a_kill_around_an_outward_call_is_flagged_and_never_repeated(
    faulty: Runner, point: str, flagged: str, sent: dict[str, int]
) -> None:
    alert = _alert()
    faulty.kill()
    faulty.restart(env={FAULTS_ENV: point})

    async def trigger() -> UUID:
        async with get_client() as client:
            return (await create_upsell_run(client, alert, AutomationLevel.FULL_AUTOMATION,
                                            deployment_name=faulty.upsell_deployment)).id  # fmt: skip

    run_id = asyncio.run(trigger())
    if point.startswith("create_zoom_meeting"):
        wait_until_paused(run_id, "reply", timeout_s=90)
        resume(run_id, "reply", {"reply": "yes"})
    faulty.process.wait(timeout=120)  # the hook killed the serving process at the point
    assert f"at {point} for event {alert.event_id}" in faulty.log_path.read_text()
    left = read_run(run_id).state
    assert left is not None and left.is_running()  # what the kill leaves: a Running run nothing executes
    time.sleep(1.2)
    assert upsell_recovery(stale_after_s=1.0, backoff_s=0, flow_run_ids=[run_id]) == {str(run_id): "rescheduled"}
    faulty.restart(env={FAULTS_ENV: ""})
    if point.startswith("post_slack_summary"):
        wait_until_paused(run_id, "reply", timeout_s=90)
        resume(run_id, "reply", {"reply": "yes"})

    outcome = _outcome_when_final(run_id)
    assert outcome.status == "needs_review"
    assert outcome.unknown_outcomes == [flagged]
    assert flagged in outcome.reviewer_note
    data_dir = faulty.data_dir
    step = point.split(":")[0]
    records = _records(data_dir, alert.event_id)
    assert records[step] == ("unknown", 1)  # claimed once, never claimed again, flagged
    assert all(attempts == 1 for _, attempts in records.values())
    calls = {
        "eml": len(list(outbox_emails(data_dir / "outbox", alert.event_id))),
        "slack.jsonl": _calls(data_dir, "slack.jsonl", alert.account_id),
        "meetings.jsonl": _calls(data_dir, "meetings.jsonl", alert.account_id),
    }
    assert calls == sent  # what reached a provider: once at most; the step killed `before` never called it


def test_the_serving_process_killed_mid_run_every_upsell_finishes_once(runner: Any) -> None:
    """A fast version of bench/crash.py: 4 upsells, the serving process SIGKILLed while they run."""
    alerts = [_alert() for _ in range(4)]

    async def trigger() -> list[UUID]:
        async with get_client() as client:
            return [(await create_upsell_run(client, a, AutomationLevel.FULL_AUTOMATION)).id for a in alerts]

    run_ids = asyncio.run(trigger())
    deadline = time.monotonic() + 60
    while not any((read_run(r).state or Scheduled()).is_running() for r in run_ids) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(random.Random(len(run_ids)).uniform(0.5, 2.5))
    runner.kill()
    try:  # the session's runner comes back whatever happens here: later tests need it
        left = Counter((read_run(r).state or Scheduled()).type.value for r in run_ids)  # Submitting is a PENDING
        time.sleep(1.2)
        recovered = upsell_recovery(stale_after_s=1.0, backoff_s=0, flow_run_ids=run_ids)
    finally:
        runner.restart()

    for run_id in run_ids:
        try:
            wait_until_paused(run_id, "reply", timeout_s=120)
            resume(run_id, "reply", {"reply": "yes"})
        except AssertionError:  # ended before the wait: a send the kill cut short, flagged needs_review
            pass
    outcomes = [_outcome_when_final(r) for r in run_ids]
    data = runner.data_dir
    for alert, outcome in zip(alerts, outcomes, strict=True):
        records = _records(data, alert.event_id)
        assert all(attempts == 1 for _, attempts in records.values()), records
        assert _calls(data, "slack.jsonl", alert.account_id) <= 1
        assert len(list(outbox_emails(data / "outbox", alert.event_id))) == 1
        unknown = [step for step, (status, _) in records.items() if status == "unknown"]
        assert (outcome.status == "needs_review") == bool(unknown), (outcome, records)
        assert len(outcome.unknown_outcomes) == len(unknown)
    # every run the kill left Running or Pending is recovered; a run killed while pausing (seen Running or Paused,
    # its form's schema not saved) is repaired instead of rerun, and a Paused one with its schema is left alone
    rerun = sum(1 for how in recovered.values() if how != "schema saved again")
    assert rerun <= left["RUNNING"] + left["PENDING"] <= len(recovered), (left, recovered)
    assert len(recovered) <= left["RUNNING"] + left["PENDING"] + left["PAUSED"], (left, recovered)


def _outcome_when_final(run_id: UUID) -> UpsellOutcome:
    final = wait_until_final(run_id, timeout_s=120)
    assert final.state is not None and final.state.is_completed(), final.state
    return UpsellOutcome.model_validate(final.state.result())
