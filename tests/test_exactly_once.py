"""An email is never sent twice: not on re-run of an event, not after a crash, not on resume."""

from __future__ import annotations

import asyncio
import time

import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.exceptions import ParameterTypeError

from blocks.mongo import SqliteOpportunityStore
from flows.api import UpsellRequestError, send_customer_reply, trigger_upsell_workflow
from flows.models import UpsellOutcome, UpsellStatus
from flows.upsell import upsell
from tasks.send_email_draft import EMAIL_STEP
from tests.support import outbox_emails, run_answering_reply, task_runs, wait_until_final, wait_until_paused
from tests.test_flow_levels import alert_for, emails
from webhook.ports import free_port


def _run_full(alert, reply: str = "no") -> UpsellOutcome:
    return run_answering_reply(alert, reply)


def test_rerun_of_the_same_event_sends_no_second_email(data_dir, event_id):
    first = _run_full(alert_for(event_id, "critical"))
    second = _run_full(alert_for(event_id, "critical").model_copy(update={"occurred_at": first_time_plus()}))
    assert first.email_status == "sent" and second.email_status == "already_sent"
    assert second.email_sent  # the customer did get it, once
    assert len(emails(data_dir, event_id)) == 1
    record = SqliteOpportunityStore(data_dir / "upsell.db").get_record(event_id, EMAIL_STEP)
    assert record["status"] == "done" and record["attempts"] == 1


def first_time_plus():
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(seconds=5)  # a distinct run name for the second run


def test_a_send_interrupted_by_a_crash_is_flagged_not_repeated(data_dir, event_id):
    store = SqliteOpportunityStore(data_dir / "upsell.db")
    assert store.claim(event_id, EMAIL_STEP).status == "claimed"  # the attempt that crashed mid-send
    outcome = upsell(alert_for(event_id, "critical"))
    assert outcome.status is UpsellStatus.NEEDS_REVIEW and outcome.email_status == "unknown"
    assert emails(data_dir, event_id) == []
    assert store.get_record(event_id, EMAIL_STEP)["status"] == "unknown"
    assert store.get_opportunity(event_id).status is UpsellStatus.NEEDS_REVIEW


async def _trigger(event_id: str) -> str:
    async with get_client() as client:
        return str(await trigger_upsell_workflow(client, "23456", event_id, "FULL_AUTOMATION", "trade_volume"))


async def _reply(run_id: str, reply: str) -> None:
    async with get_client() as client:
        await send_customer_reply(client, run_id, reply)


def test_resumed_deployment_run_repeats_no_completed_step(runner, event_id):
    run_id = asyncio.run(_trigger(event_id))
    assert asyncio.run(_trigger(event_id)) == run_id  # once per event id
    wait_until_paused(run_id, "reply", timeout_s=90)
    asyncio.run(_reply(run_id, "yes"))
    final = wait_until_final(run_id, timeout_s=90)
    assert final.state.is_completed()
    steps = ("fetch_usage", "fetch_contract", "ask_claude_for_plan", "send_email_draft",
             "post_slack_summary", "create_zoom_meeting", "log_opportunity")

    def executed() -> dict[str, int]:
        counts: dict[str, int] = {}
        for task_run in task_runs(run_id):
            name = task_run.name.rsplit("-", 1)[0]
            counts[name] = counts.get(name, 0) + 1  # resumed segments take earlier results from the wait record
        return counts

    # Task-run states reach the API as events, recorded asynchronously: the last ones may trail the flow's end.
    deadline = time.monotonic() + 30
    counts = executed()
    while any(counts.get(step) != 1 for step in steps) and time.monotonic() < deadline:
        time.sleep(0.5)
        counts = executed()
    for step in steps:
        assert counts.get(step) == 1, (step, counts)
    assert all(t.state.name == "Completed" for t in task_runs(run_id))  # no step replayed, not even "Cached"
    assert len(list(outbox_emails(runner.data_dir / "outbox", event_id))) == 1


def test_bad_parameters_fail_before_any_side_effect(data_dir):
    with pytest.raises(ParameterTypeError):
        upsell(alert={"event_id": "has spaces!", "account_id": "12345", "metric_type": "trade_volume"})
    with pytest.raises(ParameterTypeError):
        upsell(alert={"event_id": "ok-1", "account_id": "12345", "metric_type": "x", "threshold": -1})
    assert not (data_dir / "outbox").exists() and not (data_dir / "upsell.db").exists()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"automation_level": "SOMETIMES"}, "automation_level"),
        ({"event_id": "bad id with spaces"}, "event_id"),
        ({"account_id": ""}, "account_id"),
        ({"current_value": float("nan")}, "current_value"),
        ({"threshold": -5}, "threshold"),
    ],
)
def test_trigger_rejects_bad_arguments_before_calling_prefect(kwargs, field, event_id):
    """The client points at a port nobody listens on: a call to Prefect would fail with a connection error, so
    the request error proves the arguments were refused before any call."""
    args = {"account_id": "12345", "event_id": event_id, "automation_level": "HYBRID", "metric_type": "trade_volume"}
    args.update(kwargs)

    async def go():
        async with PrefectClient(api=f"http://127.0.0.1:{free_port()}/api") as client:
            return await trigger_upsell_workflow(client, **args)

    with pytest.raises(UpsellRequestError, match=field):
        asyncio.run(go())


def test_reply_must_be_a_known_answer_and_the_run_must_be_waiting(event_id):
    with pytest.raises(UpsellRequestError, match="reply"):
        asyncio.run(_reply("00000000-0000-0000-0000-000000000000", "perhaps"))
