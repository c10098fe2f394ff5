"""The whole upsell flow with every integration real: Claude, SES, Slack, Zoom, MongoDB and the HTTP sources.

Each block is saved as its `upsell-<service>` document and pointed at a local server (the fakes, moto's SES,
nx-27017), so the run goes through the real SDKs over real HTTP and the MongoDB wire protocol.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from prefect.blocks.core import Block
from pydantic import SecretStr
from pymongo import MongoClient

from blocks import (
    AnthropicCredentials,
    HttpCrmSource,
    HttpUsageSource,
    MongoOpportunityStore,
    SesEmailSender,
    SlackCredentials,
    ZoomCredentials,
)
from blocks.registry import SERVICES, load_block
from flows.models import AutomationLevel, CustomerReply, UpsellOutcome, UpsellStatus, UsageAlert
from flows.upsell import upsell
from tasks.create_zoom_meeting import MEETING_STEP
from tasks.post_slack_summary import SLACK_STEP
from tasks.send_email_draft import EMAIL_STEP
from tests.fakes.anthropic_api import DEFAULT_PLAN, FakeAnthropic
from tests.fakes.server import serve_in_thread
from tests.fakes.ses import parse_raw, sent_raw_messages
from tests.fakes.slack_api import FakeSlack
from tests.fakes.usage_api import UsageApiState, create_app
from tests.fakes.zoom_api import FakeZoom
from tests.support import find_run_id, resume, saved_blocks, wait_until_paused

REGION = "us-east-1"
USAGE_TOKEN = "usage-token-flow"
CHANNEL = "#sales-upsell-flow"
SENDER_NAME = "Acme Upsell Team"


@dataclass
class Fakes:
    """The fake vendor APIs of this module, each on its own local port."""

    anthropic: FakeAnthropic
    slack: FakeSlack
    zoom: FakeZoom
    usage_url: str
    usage: UsageApiState


@dataclass
class Wiring:
    """What one test saved: the account it set up, where its email comes from, and its MongoDB database."""

    account_id: str
    recipient: str
    sender: str
    database: str


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    anthropic_api, slack_api = FakeAnthropic().start(), FakeSlack(token="xoxb-flow").start()
    zoom_api = FakeZoom(account_id="acc-flow", client_id="cid-flow", client_secret="zoom-flow-secret").start()
    usage = UsageApiState(token=USAGE_TOKEN)
    usage_url, stop_usage = serve_in_thread(create_app(usage))
    try:
        yield Fakes(anthropic_api, slack_api, zoom_api, usage_url, usage)
    finally:
        stop_usage()
        for fake in (anthropic_api, slack_api, zoom_api):
            fake.stop()


def verified_sender(moto_url: str) -> str:
    """A from address on a domain verified in moto's SES, unique per test."""
    domain = f"sales-{uuid.uuid4().hex[:8]}.example.com"
    ses = boto3.client(
        "sesv2", region_name=REGION, endpoint_url=moto_url, aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    try:
        ses.create_email_identity(EmailIdentity=domain)
    finally:
        ses.close()
    return f"upsell@{domain}"


@pytest.fixture
def wiring(fakes: Fakes, moto_url: str, mongo_uri: str) -> Iterator[Wiring]:
    """Every integration block saved against the local servers; all deleted afterwards.

    Block documents are global on the session's Prefect server and every other test expects the local
    stand-ins, so the teardown deletes each saved document even when the test (or a save) failed.
    """
    for fake in (fakes.anthropic, fakes.slack, fakes.zoom):
        fake.reset()
    fakes.slack.messages.clear()
    fakes.zoom.meetings.clear()
    fakes.usage.reset()

    account_id = f"acct-{uuid.uuid4().hex[:8]}"
    recipient = f"buyer-{uuid.uuid4().hex[:10]}@customer.example.com"
    fakes.usage.usage[(account_id, "trade_volume")] = {
        "value": 150,
        "last_period": 111,
        "limit": 100,
        "period": "monthly",
    }
    fakes.usage.contracts[account_id] = {
        "company_name": "Acme Trading Ltd",
        "current_plan": "Growth",
        "contract_end_date": "2027-03-31",
        "renewal_date": "2027-03-01",
        "arr": 30000,  # the fake plan's 30,000 estimate is within 3x this spend
        "contact_info": {"name": "Dana Whitfield", "email": recipient, "title": "Head of Operations"},
    }
    wired = Wiring(account_id, recipient, verified_sender(moto_url), f"upsell_{uuid.uuid4().hex}")

    documents: dict[str, Block] = {
        "upsell-anthropic": AnthropicCredentials(
            api_key=SecretStr(fakes.anthropic.api_key), base_url=fakes.anthropic.base_url
        ),
        "upsell-ses": SesEmailSender(
            region_name=REGION,
            from_address=wired.sender,
            from_name=SENDER_NAME,
            aws_access_key_id=SecretStr("testing-key-id"),
            aws_secret_access_key=SecretStr("testing-secret-key"),
            endpoint_url=moto_url,
        ),
        "upsell-slack": SlackCredentials(
            bot_token=SecretStr(fakes.slack.token), channel=CHANNEL, base_url=fakes.slack.api_url
        ),
        "upsell-zoom": ZoomCredentials(
            account_id=fakes.zoom.account_id,
            client_id=fakes.zoom.client_id,
            client_secret=SecretStr(fakes.zoom.client_secret),
            api_base_url=fakes.zoom.api_base_url,
            oauth_base_url=fakes.zoom.base_url,
        ),
        "upsell-mongo": MongoOpportunityStore(
            uri=SecretStr(mongo_uri), database=wired.database, server_selection_timeout_ms=5000
        ),
        "upsell-usage": HttpUsageSource(
            base_url=fakes.usage_url,
            token=SecretStr(USAGE_TOKEN),
            field_mapping={"current": "value", "previous": "last_period", "threshold": "limit"},
        ),
        "upsell-crm": HttpCrmSource(
            base_url=fakes.usage_url, token=SecretStr(USAGE_TOKEN), field_mapping={"current_spend": "arr"}
        ),
    }
    assert set(documents) == {spec.document for spec in SERVICES.values()}  # every integration, none left out
    with saved_blocks(documents):
        yield wired
    assert [s for s in SERVICES if load_block(s) is not None] == []  # the stand-ins are back for other tests


def _run(alert: UsageAlert, reply: str = "yes") -> tuple[UpsellOutcome, str]:
    """Call the flow at FULL_AUTOMATION in a thread, answer its reply wait, return (outcome, flow run id)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(upsell, alert, automation_level=AutomationLevel.FULL_AUTOMATION)
        run_id = str(find_run_id(alert.run_name))
        wait_until_paused(run_id, "reply")
        resume(run_id, "reply", {"reply": reply})
        return future.result(timeout=60), run_id


def _mongo(uri: str) -> MongoClient[dict[str, Any]]:
    return MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=5000)


def _sent_to(moto_url: str, recipient: str) -> list[dict[str, Any]]:
    return [m for m in sent_raw_messages(moto_url) if recipient in m["destinations"]]


def test_full_automation_through_every_real_integration_sends_each_thing_once(
    fakes: Fakes, wiring: Wiring, moto_url: str, mongo_uri: str, data_dir: Path, event_id: str
) -> None:
    alert = UsageAlert(
        event_id=event_id,
        account_id=wiring.account_id,
        metric_type="trade_volume",
        current_value=150,
        threshold=100,
        severity="critical",
    )

    outcome, run_id = _run(alert)

    # The outcome: no stand-in anywhere, Claude planned it, everything went out.
    assert outcome.standins == []
    assert outcome.planner == "claude"
    assert outcome.status is UpsellStatus.COMPLETED and outcome.automation_level is AutomationLevel.FULL_AUTOMATION
    assert outcome.reply is CustomerReply.YES
    assert (outcome.email_status, outcome.email_sent, outcome.slack_posted) == ("sent", True, True)
    assert outcome.opportunity_id == alert.opportunity_id
    assert not data_dir.exists()  # no local stand-in wrote anything (outbox, Slack/meeting records, SQLite)

    # The sources and Claude were asked over HTTP with their credentials.
    assert [s.authorization for s in fakes.usage.seen] == [f"Bearer {USAGE_TOKEN}"] * 2
    [ask] = fakes.anthropic.requests_to("/v1/messages")
    assert ask.body["tool_choice"] == {"type": "tool", "name": "record_upsell_plan"}
    assert wiring.recipient not in str(ask.body)  # the contact's address stays out of the prompt

    # The email, read back from moto.
    [sent] = _sent_to(moto_url, wiring.recipient)
    email = parse_raw(sent["raw_data"])
    assert email["Subject"] == f"Acme Trading Ltd: room to grow with {DEFAULT_PLAN['recommended_plan']}"
    assert email["To"] == wiring.recipient
    assert email["From"] == f"{SENDER_NAME} <{wiring.sender}>"
    assert email["List-Unsubscribe"].startswith("<http") and "/unsubscribe/" in email["List-Unsubscribe"]
    assert email["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # The Slack message, in the configured channel, linking to this run.
    [message] = fakes.slack.messages
    assert message["channel"] == CHANNEL
    assert wiring.account_id in message["text"] and DEFAULT_PLAN["recommended_plan"] in message["text"]
    assert run_id in str(message["blocks"])

    # The Zoom meeting, with the customer invited.
    [meeting] = fakes.zoom.meetings
    assert meeting["settings"]["meeting_invitees"] == [{"email": wiring.recipient}]
    assert DEFAULT_PLAN["recommended_plan"] in meeting["topic"]
    assert outcome.meeting is not None and outcome.meeting.join_url == meeting["join_url"]
    assert outcome.meeting.meeting_id == str(meeting["id"])

    # The opportunity and the send-once records, read back from MongoDB.
    with _mongo(mongo_uri) as client:
        db = client[wiring.database]
        [document] = list(db["opportunities"].find({"event_id": event_id}))
        assert document["_id"] == event_id and document["opportunity_id"] == alert.opportunity_id
        assert document["meeting_join_url"] == meeting["join_url"]
        assert document["email_message_id"] == sent["id"]
        assert (document["status"], document["reply"], document["planner"]) == ("completed", "yes", "claude")
        assert document["recommended_plan"] == DEFAULT_PLAN["recommended_plan"]
        assert document["estimated_value"] == DEFAULT_PLAN["estimated_value"]
        assert document["flow_run_id"] == run_id
        records = {r["step"]: r for r in db["idempotency_records"].find({"event_id": event_id})}
    assert set(records) == {EMAIL_STEP, SLACK_STEP, MEETING_STEP}
    assert all((r["status"], r["attempts"]) == ("done", 1) for r in records.values())
    assert records[EMAIL_STEP]["result"] == {"message_id": sent["id"]}
    assert records[SLACK_STEP]["result"]["ts"] == message["ts"]
    assert records[MEETING_STEP]["result"]["join_url"] == meeting["join_url"]

    # The same event again (a re-delivered alert: a new run, same event id): nothing is sent twice.
    again, again_run_id = _run(alert.model_copy(update={"occurred_at": datetime.now(UTC) + timedelta(seconds=5)}))

    assert again_run_id != run_id
    assert (again.status, again.standins, again.email_status) == (UpsellStatus.COMPLETED, [], "already_sent")
    assert again.meeting is not None and again.meeting.join_url == meeting["join_url"]
    assert len(_sent_to(moto_url, wiring.recipient)) == 1
    assert len(fakes.slack.messages) == 1
    assert len(fakes.zoom.meetings) == 1
    with _mongo(mongo_uri) as client:
        db = client[wiring.database]
        assert db["opportunities"].count_documents({"event_id": event_id}) == 1
        [document] = list(db["opportunities"].find({"event_id": event_id}))
        assert document["email_message_id"] == sent["id"] and document["meeting_join_url"] == meeting["join_url"]
        records = {r["step"]: r for r in db["idempotency_records"].find({"event_id": event_id})}
    assert all((r["status"], r["attempts"]) == ("done", 1) for r in records.values())
