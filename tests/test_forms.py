"""The forms a person answers a wait with (Prefect UI Resume forms), and the email a reviewer approves.

The forms are checked as Prefect saves them for a real waiting run on the session's test server: the UI renders
that schema, and the Prefect API checks every answer against it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.responses import SetStateStatus

from flows import inputs
from flows.api import send_customer_reply, trigger_upsell_workflow
from flows.inputs import WaitRequest, wait_for_input
from flows.models import (
    EXPIRED_WAIT_INPUT,
    AutomationLevel,
    ContractData,
    CustomerReply,
    CustomerReplyInput,
    EmailApproval,
    EmailDraft,
    UpsellPlan,
    UsageAlert,
    UsageData,
    metric_label,
)
from tasks.content.email import compose_email
from tasks.content.outgoing import allowed_links, email_problems
from tests.support import find_run_id, read_run, wait_until_final, wait_until_paused

BASE = "http://127.0.0.1:8312"
PLAN = UpsellPlan(
    recommended_plan="Growth", estimated_value=35271.0, justification="trade_volume is at 35,271, 50% over.",
    features=["No trade_volume cap", "Priority support"], roi_analysis="r", risk_assessment="low",
)


def a_draft() -> EmailDraft:
    usage = UsageData(account_id="12345", current_usage=35271, usage_trend="increasing", usage_period="monthly",
                      threshold_exceeded=0.5, metric_type="trade_volume", additional_context={"threshold": 20000})
    contract = ContractData(account_id="12345", company_name="Acme", current_plan="Starter", contract_end_date="x",
                            renewal_date="x", current_spend=1000.0,
                            contact_info={"name": "Ann Lee", "email": "ann@example.com"})
    links = {answer: f"{BASE}/links/{answer}-token" for answer in ("yes", "no", "maybe")}
    return compose_email(usage=usage, contract=contract, plan=PLAN, reply_links=links,
                         unsubscribe_url=f"{BASE}/unsubscribe/u-token", sender_name="The Sales Team",
                         sender_postal_address="1 Main Street")


START = datetime(2026, 12, 8, 15, 0, tzinfo=UTC)


def a_contract(timezone: str = "UTC") -> ContractData:
    return ContractData(account_id="12345", company_name="Acme", current_plan="Starter", contract_end_date="x",
                        renewal_date="x", current_spend=1000.0,
                        contact_info={"name": "Ann Lee", "email": "ann@example.com", "timezone": timezone})


# ---- a wait on the session's Prefect server: the form as saved, and what the Prefect API accepts ----


@flow(name="form-under-test", flow_run_name="{name}")
def wait_once(name: str, request: WaitRequest[Any]) -> dict[str, Any]:
    """Wait for one answer with the upsell's own waiting code, and return it."""
    return wait_for_input(request, grace_s=60, poll_s=1).model_dump(mode="json")


def waiting(pool: ThreadPoolExecutor, request: WaitRequest[Any]) -> tuple[Future[dict[str, Any]], UUID]:
    name = f"form-{request.kind}-{time.monotonic_ns()}"
    future = pool.submit(wait_once, name, request)
    run_id = find_run_id(name)
    wait_until_paused(run_id, request.kind)
    return future, run_id


def saved(run_id: UUID, part: str, timeout_s: float = 10) -> Any:
    """The form's saved `schema` or `description` (Prefect saves them a moment after the run pauses)."""
    keyset = read_run(run_id).state.state_details.run_input_keyset
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            try:
                return client.read_flow_run_input(run_id, keyset[part])
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def answer(run_id: UUID, run_input: dict[str, Any]) -> SetStateStatus:
    """Resume through the Prefect API, as the UI's Resume form does (no check of ours on the way)."""
    with get_client(sync_client=True) as client:
        return client.resume_flow_run(run_id, run_input=run_input).status


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield executor


def schema_of(run_id: UUID) -> dict[str, Any]:
    import json

    return json.loads(saved(run_id, "schema"))


def test_the_review_form_keeps_its_limits_and_help_and_prefect_refuses_a_negative_value(pool):
    future, run_id = waiting(pool, inputs.reply_review(PLAN, CustomerReply.YES, False, timeout_s=120))
    schema = schema_of(run_id)
    value, approved, note = (schema["properties"][k] for k in ("estimated_value", "approved", "note"))
    assert value["minimum"] == 0 and value["default"] == 35271.0 and value["type"] == "number"
    assert value["title"] == "Estimated value (per year)" and "yearly revenue" in value["description"]
    assert approved["description"] and note["description"]
    assert set(schema["required"]) == {"approved"}  # the decision: the UI does not call it "(Optional)"
    assert "answered **yes**" in saved(run_id, "description")

    assert answer(run_id, {"approved": True, "estimated_value": -5, "note": ""}) == SetStateStatus.REJECT
    assert read_run(run_id).state.is_paused()  # still waiting: nothing was stored
    assert answer(run_id, {"approved": True, "estimated_value": 1200.5, "note": "checked"}) == SetStateStatus.ACCEPT
    assert future.result(timeout=60) == {"approved": True, "estimated_value": 1200.5, "note": "checked", "reviewer": ""}


def test_an_emptied_value_keeps_the_prefilled_one_instead_of_a_schema_error(pool):
    future, run_id = waiting(pool, inputs.reply_review(PLAN, CustomerReply.YES, False, timeout_s=120))
    # the UI sends an emptied number field as no value: Prefect used to refuse it with
    # "'estimated_value' is a required property"; it now means the value as prefilled
    assert answer(run_id, {"approved": True, "note": ""}) == SetStateStatus.ACCEPT
    assert future.result(timeout=60)["estimated_value"] == PLAN.estimated_value


def test_the_email_form_is_not_approved_by_default_and_its_message_holds_no_link(pool):
    draft = a_draft()
    future, run_id = waiting(pool, inputs.email_approval(draft, PLAN, timeout_s=120))
    schema = schema_of(run_id)
    props = schema["properties"]
    assert props["approved"]["default"] is False and "approved" in schema["required"]
    message = props["body_text"]
    assert message["title"] == "Message" and "added when the email is sent" in message["description"]
    assert props["body_text"]["default"] == draft.message and "\n\n" in draft.message  # several lines, shown whole
    assert "://" not in props["body_text"]["default"] and "token" not in props["body_text"]["default"]
    assert props["subject"]["default"] == draft.subject
    description = json.loads(saved(run_id, "description"))  # saved as a JSON string
    assert "Tick **Send this email**" in description
    # the UI's text field shows one line: the whole draft, every line of it, is quoted above the form
    assert "> Subject: " in description
    for line in filter(str.strip, draft.message.splitlines()):
        assert f"> {inputs._plain(line)}" in description, line
    assert answer(run_id, {"subject": draft.subject}) == SetStateStatus.REJECT  # "approved" must be answered
    assert answer(run_id, {"approved": False, "note": "not now"}) == SetStateStatus.ACCEPT
    assert future.result(timeout=60)["approved"] is False


def test_the_reply_form_offers_a_person_only_yes_no_or_maybe_and_the_sweep_still_closes_it(pool):
    request = inputs.customer_reply(a_draft(), PLAN, timeout_s=120)
    future, run_id = waiting(pool, request)
    assert schema_of(run_id)["properties"]["reply"]["enum"] == ["yes", "no", "maybe"]
    assert answer(run_id, {"reply": "no_reply"}) == SetStateStatus.REJECT
    assert answer(run_id, EXPIRED_WAIT_INPUT["reply"]) == SetStateStatus.ACCEPT  # what the reply-timeouts sweep sends
    assert future.result(timeout=60) == {}  # no_reply: written as an empty answer

    future, run_id = waiting(pool, request)

    async def no_reply_from_the_api() -> None:
        async with get_client() as client:
            await send_customer_reply(client, run_id, "no_reply")

    asyncio.run(no_reply_from_the_api())
    assert future.result(timeout=60) == {}
    assert CustomerReplyInput.model_validate({}).reply is CustomerReply.NO_REPLY


def test_every_form_field_has_a_title_and_help_text_also_once_prefilled():
    for request in _requests():
        for form in (request.input_type, inputs.answer_form(request)):
            for name, info in form.model_fields.items():
                assert info.title and info.description, f"{form.__name__}.{name}"


def _requests() -> list[WaitRequest[Any]]:
    draft, alert = a_draft(), UsageAlert(event_id="e1", account_id="12345", metric_type="trade_volume")
    return [
        inputs.email_approval(draft, PLAN, 60), inputs.customer_reply(draft, PLAN, 60),
        inputs.reply_review(PLAN, CustomerReply.MAYBE, False, 60),
        inputs.meeting_approval(draft, a_contract(), START, 60),
        inputs.opportunity_approval(alert, PLAN, CustomerReply.NO_REPLY, 60, a_contract()),
    ]


def test_the_meeting_form_proposes_the_time_in_the_contacts_zone_and_reads_right_when_ticked():
    request = inputs.meeting_approval(a_draft(), a_contract("Europe/Berlin"), START, 60)
    assert request.initial == {"approved": True}
    assert "Tick **Book the meeting**" not in request.description  # it is ticked already
    assert "proposed for **Tue 8 Dec 2026 16:00 Europe/Berlin (15:00 UTC)**" in request.description
    assert "untick **Book the meeting**" in request.description and "(Acme)" in request.description
    unknown = inputs.meeting_approval(a_draft(), a_contract(""), START, 60).description
    assert "proposed for **Tue 8 Dec 2026 15:00 UTC**" in unknown


def test_the_opportunity_form_names_the_company_as_the_others_do():
    alert = UsageAlert(event_id="e1", account_id="12345", metric_type="trade_volume")
    request = inputs.opportunity_approval(alert, PLAN, CustomerReply.YES, 60, a_contract())
    assert "**Acme**" in request.description and "12345" not in request.description
    assert "account 12345" in inputs.opportunity_approval(alert, PLAN, CustomerReply.YES, 60).description


# ---- the approved email: what a reviewer's edit changes, and what it cannot ----


def test_a_new_subject_alone_keeps_the_drafted_html_with_its_buttons():
    draft = a_draft()
    approved = inputs.approved_draft(draft, EmailApproval(approved=True, subject="A better subject",
                                                          body_text=draft.message))
    assert approved.subject == "A better subject"
    assert (approved.body_html, approved.body_text) == (draft.body_html, draft.body_text)
    assert "<strong>Growth</strong>" in approved.body_html and "<ul><li>" in approved.body_html
    assert inputs.approved_draft(draft, EmailApproval(approved=True)) == draft  # empty fields: as drafted


def test_an_edited_message_is_framed_by_the_same_links_the_reviewer_never_sees():
    draft = a_draft()
    edited = "Hi Ann,\n\nShort version: Growth removes the cap.\nCall me any time.\n\n- No cap\n- R&D support"
    approved = inputs.approved_draft(draft, EmailApproval(approved=True, body_text=edited))
    assert approved.message == edited and approved.subject == draft.subject
    assert approved.body_text.startswith(edited)
    for url in [*draft.reply_links.values(), draft.unsubscribe_url]:
        assert url in approved.body_text and f'href="{url}"' in approved.body_html
    assert "<p>Short version: Growth removes the cap.<br>Call me any time.</p>" in approved.body_html
    assert "<ul><li>No cap</li><li>R&amp;D support</li></ul>" in approved.body_html  # escaped: text, never markup
    assert "Maybe later" in approved.body_text and "Maybe later" in approved.body_html
    assert email_problems(approved, allowed_links(BASE)) == [] == email_problems(draft, allowed_links(BASE))


def test_an_edited_message_with_a_foreign_link_is_still_withheld():
    draft = a_draft()
    approved = inputs.approved_draft(draft, EmailApproval(approved=True, body_text="See https://attacker.example/x"))
    problems = email_problems(approved, allowed_links(BASE))
    assert "text part: a link that is not the product's own" in problems
    assert any(p.startswith("HTML part: a link") for p in problems)


def test_the_customer_reads_the_metric_in_words_never_its_raw_name():
    assert metric_label("trade_volume") == "trade volume"
    assert metric_label("apiCalls") == "api calls" and metric_label("API_calls") == "API calls"
    draft = a_draft()  # the planner's text names the metric `trade_volume` too
    for part in (draft.subject, draft.message, draft.body_text, draft.body_html):
        assert "trade_volume" not in part.lower()
    assert "Your team's trade volume reached" in draft.message and "No trade volume cap" in draft.body_html


# ---- a deployment run (suspended between waits): each wait is announced once ----


def _logs(run_id: str) -> list[str]:
    """Every log line of the run, oldest first (paged: a run with its task runs logs more than a page)."""
    found: list[str] = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(run_id)])),
                                    limit=200, offset=len(found))  # fmt: skip
            found += [log.message for log in page]
            if len(page) < 200:
                return found


def _eventually(read: Callable[[], list[str]], done: Callable[[list[str]], bool], timeout_s: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while not done(found := read()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def test_a_resumed_deployment_run_logs_each_suspension_once(runner, event_id):
    async def trigger() -> str:
        async with get_client() as client:
            return str(await trigger_upsell_workflow(client, "12345", event_id, AutomationLevel.HYBRID,
                                                     "trade_volume", current_value=150, threshold=100))

    run_id = asyncio.run(trigger())
    wait_until_paused(run_id, "reply", timeout_s=90)
    assert answer(UUID(run_id), {"reply": "maybe"}) == SetStateStatus.ACCEPT
    wait_until_paused(run_id, "review", timeout_s=60)
    review = schema_of(UUID(run_id))["properties"]["estimated_value"]
    assert review["minimum"] == 0 and review["description"]  # the same form in a suspended deployment run
    assert answer(UUID(run_id), {"approved": True, "estimated_value": -5}) == SetStateStatus.REJECT
    assert answer(UUID(run_id), {"approved": True, "estimated_value": 10.0}) == SetStateStatus.ACCEPT
    assert wait_until_final(run_id, timeout_s=60).state.is_completed()
    logs = _eventually(lambda: _logs(run_id), lambda found: any(m.startswith("Finished in state") for m in found))
    assert sum(m.startswith("Suspending flow run") for m in logs) == 2, logs  # the reply, then the review
