"""Whenever a run starts waiting for a person's decision, the sales team hears of it in Slack (here the local
stand-in's records): the run's page and approve/reject links that answer that wait, once per wait, however
often the run is resumed and replayed."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

from prefect.client.orchestration import get_client

from flows.api import trigger_upsell_workflow
from flows.models import WAIT_INPUTS, AutomationLevel, UpsellOutcome, UpsellPlan, UsageAlert
from flows.upsell import upsell
from tasks.content.outgoing import allowed_links, slack_problems
from tasks.notify_reviewer import build_notice
from tasks.runtime.links import verify_token
from tasks.runtime.settings import get_settings
from tests.support import find_run_id, resume, run_answering_reply, wait_until_final, wait_until_paused


def slack_records(data_dir: Path, run_id: UUID | str) -> list[dict]:
    """What the Slack stand-in received about this run (every message links to the run's page)."""
    path = data_dir / "slack.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [record for record in map(json.loads, lines) if f"/runs/flow-run/{run_id}" in json.dumps(record)]


def notices(data_dir: Path, run_id: UUID | str) -> list[dict]:
    return [r for r in slack_records(data_dir, run_id) if r["text"].startswith("Decision needed")]


def buttons(notice: dict) -> dict[str, str]:
    (actions,) = [block for block in notice["blocks"] if block["type"] == "actions"]
    return {button["text"]["text"].lower(): button["url"] for button in actions["elements"]}


def link_answer(url: str, run_id: UUID | str, wait: str) -> dict:
    """The answer a signed link carries, checked as the receiver checks it."""
    token = verify_token(url.rsplit("/", 1)[-1], get_settings().link_secret.get_secret_value())
    assert (token.flow_run_id, token.wait) == (str(run_id), wait)
    WAIT_INPUTS[wait].model_validate(token.value)  # the form of that wait takes it
    return token.value


def test_the_email_approval_is_announced_before_anything_is_sent_and_its_links_answer_it(data_dir, event_id):
    alert = UsageAlert(event_id=event_id, account_id="12345", metric_type="trade_volume", severity="low")
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(upsell, alert)  # low severity: HUMAN_INTERVENTION, the email waits for approval
        run_id = find_run_id(alert.run_name)
        wait_until_paused(run_id, "approve-email")
        (notice,) = slack_records(data_dir, run_id)  # the notice is the first and only message: no summary yet
        assert not (data_dir / "outbox").exists() or not list((data_dir / "outbox").iterdir())
        assert "approve the upsell email before it is sent" in notice["text"] and "answer due by" in notice["text"]
        assert "Acme Trading Ltd (12345)" in json.dumps(notice["blocks"])
        links = buttons(notice)
        assert set(links) == {"approve", "reject"}
        approve = link_answer(links["approve"], run_id, "approve-email")
        assert approve["approved"] is True
        assert link_answer(links["reject"], run_id, "approve-email")["approved"] is False
        resume(run_id, "approve-email", approve)  # what the receiver does when the Approve button is pressed

        wait_until_paused(run_id, "reply")
        resume(run_id, "reply", {"reply": "no"})
        wait_until_paused(run_id, "approve-opportunity")
        last = notices(data_dir, run_id)[-1]
        assert len(notices(data_dir, run_id)) == 2 and "approve the opportunity before it is logged" in last["text"]
        reject = link_answer(buttons(last)["reject"], run_id, "approve-opportunity")
        assert reject["approved"] is False and reject["estimated_value"] > 0
        resume(run_id, "approve-opportunity", reject)
        outcome = future.result(timeout=60)
    assert outcome.email_sent and outcome.status == "rejected" and outcome.reviewer_note == "rejected from Slack"


def test_a_run_at_full_automation_asks_nobody_and_posts_no_notice(data_dir, event_id):
    alert = UsageAlert(event_id=event_id, account_id="12345", metric_type="trade_volume", severity="critical")
    run_answering_reply(alert, "maybe")
    run_id = find_run_id(alert.run_name)
    records = slack_records(data_dir, run_id)
    assert len(records) == 1 and not notices(data_dir, run_id)  # the summary only


def test_a_deployment_run_announces_each_wait_once_although_each_resume_replays_the_flow(runner, event_id):
    async def trigger() -> UUID:
        async with get_client() as client:
            return await trigger_upsell_workflow(client, "12345", event_id, AutomationLevel.HUMAN_INTERVENTION,
                                                 "trade_volume")  # fmt: skip

    run_id = asyncio.run(trigger())
    answers = {
        "approve-email": {"approved": True},
        "reply": {"reply": "yes"},
        "approve-meeting": {"approved": True},
        "approve-opportunity": {"approved": True, "estimated_value": 5000.0, "note": "good"},
    }
    for wait, answer in answers.items():  # each resume starts a new segment that replays the steps before it
        wait_until_paused(run_id, wait, timeout_s=90)
        resume(run_id, wait, answer)
    final = wait_until_final(run_id, timeout_s=90)
    assert final.state is not None and final.state.is_completed() and final.state.name == "Won"
    assert UpsellOutcome.model_validate(final.state.result()).meeting is not None
    told = [n["text"].split(": ", 1)[1].split(" (")[0] for n in notices(runner.data_dir, run_id)]
    assert told == [
        "approve the upsell email before it is sent",
        "approve booking the meeting the customer asked for",
        "approve the opportunity before it is logged",
    ]
    assert len(slack_records(runner.data_dir, run_id)) == 4  # and the summary, once


def test_a_notice_built_from_hostile_data_keeps_only_our_links():
    plan = UpsellPlan(recommended_plan="<!channel> see http://evil.example", estimated_value=1000.0,
                      justification="j", features=[], roi_analysis="", risk_assessment="")  # fmt: skip
    alert = UsageAlert(event_id="evt-hostile", account_id="<@U123> acme", metric_type="trade_volume")
    settings = get_settings()
    ui = "http://127.0.0.1:4200"
    approve = f"{settings.public_base_url.rstrip('/')}/links/abc.def"
    notice = build_notice(alert, "Evil Corp www.evil.example", "review", plan, None, datetime.now(UTC),
                          f"{ui}/runs/flow-run/{uuid4()}", {"approve": approve})  # fmt: skip
    assert slack_problems(notice.text, notice.blocks, allowed_links(settings.public_base_url, ui)) == []
    assert "evil" not in json.dumps(notice.model_dump()) and "<!channel>" not in json.dumps(notice.model_dump())
    assert buttons(notice.model_dump()) == {"approve": approve}
