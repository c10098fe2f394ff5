"""The adversarial corpus through the real flow: hostile text in every free-text field of the CRM and usage answers
and in every text field of Claude's answer, read back from the built `.eml`, the Slack fake and Claude's requests.

The corpus goes in groups of `GROUP` neighbouring strings (neighbours share a category): each group gets its
own upsell (its own account), with the group's strings, space-separated, in: company name, current plan,
contract dates, contact name and title, contract notes; the usage answer's metric name and context; Claude's
recommended plan, justification, features, ROI and risk. The runs go through the real anthropic SDK, slack-sdk
and httpx against the local fakes, and the email through the file outbox (the `.eml` the SES sender would send).
Each string on its own, in each field on its own, is built into an email and a Slack post without Prefect in
`tests/test_untrusted.py`; this test proves the same of the real flow, at a sixth of the runs (each run is
about 3 CPU seconds of Prefect's engine, so the group size sets this test's time).
"""

from __future__ import annotations

import re
import time
import unicodedata
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.blocks.core import Block
from prefect.settings import PREFECT_UI_URL
from pydantic import SecretStr

from blocks import AnthropicCredentials, HttpCrmSource, HttpUsageSource, SlackCredentials
from blocks.mongo import SqliteOpportunityStore
from flows.models import (
    AutomationLevel,
    ContractData,
    EmailResult,
    PlanResult,
    SlackResult,
    UpsellOutcome,
    UpsellPlan,
    UpsellStatus,
    UsageAlert,
)
from flows.upsell import upsell
from tasks.post_slack_summary import post_slack_summary
from tasks.runtime.policy import configured
from tests.containment import email_failures, slack_failures, text_failures
from tests.fakes.anthropic_api import DEFAULT_PLAN, FakeAnthropic
from tests.fakes.server import serve_in_thread
from tests.fakes.slack_api import FakeSlack
from tests.fakes.usage_api import UsageApiState, create_app
from tests.hostile_corpus import CORPUS
from tests.support import find_run_id, outbox_email, read_run, resume, saved_blocks, wait_until_paused

TOKEN = "usage-token-hostile"
GROUP = 6  # corpus strings per upsell run
PROMPT_TAGS = ("usage_data", "contract_data", "plan_catalogue")


@dataclass
class Fakes:
    anthropic: FakeAnthropic
    slack: FakeSlack
    usage: UsageApiState


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    anthropic_api, slack_api = FakeAnthropic().start(), FakeSlack(token="xoxb-hostile").start()
    usage = UsageApiState(token=TOKEN)
    usage_url, stop_usage = serve_in_thread(create_app(usage))
    blocks: dict[str, Block] = {
        "upsell-anthropic": AnthropicCredentials(
            api_key=SecretStr(anthropic_api.api_key), base_url=anthropic_api.base_url
        ),
        "upsell-slack": SlackCredentials(
            bot_token=SecretStr(slack_api.token), channel="#hostile", base_url=slack_api.api_url
        ),
        "upsell-usage": HttpUsageSource(base_url=usage_url, token=SecretStr(TOKEN)),
        "upsell-crm": HttpCrmSource(base_url=usage_url, token=SecretStr(TOKEN), field_mapping={"current_spend": "arr"}),
    }  # fmt: skip
    try:
        with saved_blocks(blocks):
            yield Fakes(anthropic_api, slack_api, usage)
    finally:
        stop_usage()
        anthropic_api.stop()
        slack_api.stop()


def _place(fakes: Fakes, account: str, recipient: str, text: str) -> None:
    """`text` in every free-text field of the CRM and usage answers and of Claude's answer for `account`."""
    fakes.usage.contracts[account] = {
        "company_name": text,
        "current_plan": text,
        "contract_end_date": text,
        "renewal_date": text,
        "arr": 30000,
        "contract_terms": {"notes": text, "billing": text},
        "contact_info": {"name": text, "email": recipient, "title": text},
    }
    fakes.usage.usage[(account, "trade_volume")] = {
        "current_usage": 150,
        "usage_trend": "increasing",
        "usage_period": "monthly",
        "threshold_exceeded": 0.5,
        "growth_rate": 0.35,
        "metric_type": text,
        "additional_context": {"threshold": 100, "note": text, "source": text},
    }
    fakes.anthropic.plans_for[account] = {
        **DEFAULT_PLAN,
        "recommended_plan": f"Professional {text}",
        "justification": f"Usage is 50% over the cap. {text}",
        "features": ["Real-time reports", text],
        "roi_analysis": text,
        "risk_assessment": f"Low. {text}",
    }


def _answer_reply(alert: UsageAlert, timeout_s: float = 240) -> None:
    """Answer the run's reply wait with "no" (so it ends), or return if it ended without waiting."""
    run_id = find_run_id(alert.run_name, timeout_s=timeout_s)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = read_run(run_id).state
        if state is not None and state.is_paused() and state.state_details.pause_key == "reply":
            resume(run_id, "reply", {"reply": "no"})
            return
        if state is not None and state.is_final():
            return
        time.sleep(0.5)


def _prompt_failures(requests: list[Any], text: str) -> list[str]:
    """Corpus text reaches Claude only inside the data tags of the first message, never in a tool_result."""
    failures = []
    probe = " ".join(unicodedata.normalize("NFKC", text).split())
    for request in requests:
        first = request.body["messages"][0]["content"]
        outside = first
        for tag in PROMPT_TAGS:
            if first.count(f"</{tag}>") != 1:
                failures.append(f"prompt: <{tag}> closed {first.count(f'</{tag}>')} times")
            outside = re.sub(rf"<{tag}>.*?</{tag}>", "", outside, flags=re.S)
        if outside.strip() != "Recommend the upsell for this account by calling record_upsell_plan.":
            failures.append("prompt: text outside the data tags")
        for message in request.body["messages"][1:]:
            if message["role"] != "user":
                continue
            for block in message["content"]:
                result = str(block.get("content", ""))
                if len(probe) >= 4 and probe in result:
                    failures.append("prompt: corpus text quoted in a tool_result")
                failures += text_failures("tool_result", result, (), multiline=False)
    return failures


@pytest.mark.timeout(900)
def test_hostile_corpus_never_reaches_an_outgoing_message(
    fakes: Fakes, data_dir: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = uuid.uuid4().hex[:8]
    cases = []
    for index in range(0, len(CORPUS), GROUP):
        group = CORPUS[index : index + GROUP]
        text = " ".join(t for _, t in group)
        account = f"hostile-{batch}-{index:03d}"
        recipient = f"contact-{index:03d}@customer-{batch}.example.com"
        _place(fakes, account, recipient, text)
        alert = UsageAlert(
            event_id=f"evt-{account}",
            account_id=account,
            metric_type="trade_volume",
            current_value=150,
            threshold=100,
            severity="critical",
        )
        cases.append((group, text, account, recipient, alert))

    outcomes: dict[str, UpsellOutcome | BaseException] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        runs = {
            alert.event_id: pool.submit(upsell, alert, automation_level=AutomationLevel.FULL_AUTOMATION)
            for *_, alert in cases[:4]
        }
        # four flows at a time, each with a thread that answers its reply wait
        pending = list(cases[4:])
        answers = [pool.submit(_answer_reply, alert) for *_, alert in cases[:4]]
        while runs:
            event_id, future = next(iter(runs.items()))
            try:
                outcomes[event_id] = future.result(timeout=300)
            except Exception as exc:  # a crash is a failed case, reported below with the others
                outcomes[event_id] = exc
            del runs[event_id]
            if pending:
                *_, alert = pending.pop(0)
                runs[alert.event_id] = pool.submit(upsell, alert, automation_level=AutomationLevel.FULL_AUTOMATION)
                answers.append(pool.submit(_answer_reply, alert))
        for answer in answers:
            answer.result(timeout=60)

    failures: dict[str, list[str]] = {}
    sent = 0
    ui_base = f"{str(PREFECT_UI_URL.value()).rstrip('/')}/runs/flow-run/"
    for group, text, account, recipient, alert in cases:
        outcome = outcomes[alert.event_id]
        problems: list[str] = []
        if isinstance(outcome, BaseException):
            problems.append(f"the run crashed: {outcome!r}")
        else:
            if outcome.status is not UpsellStatus.COMPLETED or outcome.email_status != "sent":
                problems.append(f"not sent: {outcome.status} / {outcome.email_status} ({outcome.reviewer_note})")
            problems += text_failures("planner reason", outcome.planner_reason, (), multiline=False)
            sent += outcome.email_status == "sent"
        eml = outbox_email(data_dir / "outbox", alert.event_id)
        problems += email_failures(eml.read_bytes() if eml.exists() else None, recipient)
        slack = [m for m in fakes.slack.messages if account in m.get("text", "")]
        problems += slack_failures(slack[0] if len(slack) == 1 else None, ui_base)
        asked = [r for r in fakes.anthropic.received if account in str(r.body["messages"][0]["content"])]
        problems += _prompt_failures(asked, text) if asked else ["Claude was not asked"]
        if problems:
            failures[repr(group)] = problems

    strings = len(CORPUS)
    contained = strings - sum(len(group) for group, *_ in cases if repr(group) in failures)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    with capsys.disabled():  # the figure the issue asks for, in `make test`'s output
        reporter.write_line(
            f"hostile corpus through the flow: contained {contained}/{strings} strings"
            f" in {len(cases)} runs ({sent} emails sent, every one checked)"
        )
    assert strings >= 80
    assert failures == {}, failures


def _clean_account(fakes: Fakes, **contract: Any) -> tuple[UsageAlert, str]:
    """A well-behaved account on the fakes (contract fields overridden by `contract`), and its alert."""
    account = f"acct-{uuid.uuid4().hex[:10]}"
    recipient = f"dana-{account}@customer.example.com"
    body = {
        "company_name": "Acme Trading",
        "current_plan": "Growth",
        "contract_end_date": "2027-03-31",
        "renewal_date": "2027-03-01",
        "arr": 30000,
        "contact_info": {"name": "Dana Whitfield", "email": recipient, "title": "CTO"},
        **contract,
    }
    fakes.usage.contracts[account] = body
    fakes.usage.usage[(account, "trade_volume")] = {"current": 150, "previous": 111, "threshold": 100}
    alert = UsageAlert(event_id=f"evt-{account}", account_id=account, metric_type="trade_volume",
                       current_value=150, threshold=100, severity="critical")  # fmt: skip
    return alert, recipient


def _nothing_sent(fakes: Fakes, data_dir: Path, alert: UsageAlert) -> bool:
    eml = outbox_email(data_dir / "outbox", alert.event_id)
    return not eml.exists() and not [m for m in fakes.slack.messages if alert.account_id in m.get("text", "")]


@pytest.mark.parametrize(
    ("contract", "usage", "field"),
    [
        ({"contact_info": {"name": "Dana", "email": "dana@buyer.example, leak@attacker.example"}}, None,
         "contract.contact_info.email is not one valid email address"),
        ({"contact_info": {"name": "Dana"}}, None, "contract.contact_info.email is missing"),
        ({"arr": 1e300}, None, "contract.current_spend is above the cap"),
        ({"arr": -5}, None, "contract.current_spend is missing or malformed"),
        ({}, '{"current_usage": NaN, "usage_trend": "stable", "usage_period": "monthly", "threshold_exceeded": 0.5}',
         "usage.current_usage is not a finite number"),
        ({}, {"current": 150, "previous": 111, "threshold": -100}, "usage.threshold is missing or malformed"),
    ],
    ids=["two-recipients", "no-recipient", "huge-spend", "negative-spend", "nan-usage", "negative-threshold"],
)  # fmt: skip
def test_invalid_source_data_ends_needs_review_with_the_field_named_and_nothing_sent(
    fakes: Fakes, data_dir: Path, contract: dict[str, Any], usage: Any, field: str
) -> None:
    alert, _ = _clean_account(fakes, **contract)
    if usage is not None:
        fakes.usage.usage[(alert.account_id, "trade_volume")] = usage
    with ThreadPoolExecutor(max_workers=2) as pool:
        future = pool.submit(upsell, alert, automation_level=AutomationLevel.FULL_AUTOMATION)
        pool.submit(_answer_reply, alert, 60)  # ends a run that wrongly went on to wait for a reply
        outcome = future.result(timeout=120)

    assert outcome.status is UpsellStatus.NEEDS_REVIEW and outcome.email_status == "not_sent"
    assert field in outcome.reviewer_note and outcome.reviewer_note.startswith("stopped before any message: ")
    assert "attacker" not in outcome.reviewer_note and "NaN" not in outcome.reviewer_note  # named, not quoted
    assert _nothing_sent(fakes, data_dir, alert)
    assert not [r for r in fakes.anthropic.received if alert.account_id in str(r.body)]  # not even Claude was asked
    assert read_run(find_run_id(alert.run_name)).state.is_completed()  # the run did not crash on it
    logged = SqliteOpportunityStore(data_dir / "upsell.db").get_opportunity(alert.event_id)
    assert logged is not None and logged.status is UpsellStatus.NEEDS_REVIEW and field in logged.reviewer_note


def test_a_reviewer_edit_with_a_foreign_link_is_withheld_and_goes_to_review(fakes: Fakes, data_dir: Path) -> None:
    alert, recipient = _clean_account(fakes)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(upsell, alert, automation_level=AutomationLevel.HUMAN_INTERVENTION)
        run_id = find_run_id(alert.run_name)
        wait_until_paused(run_id, "approve-email")
        edited = {"approved": True, "subject": "Hello", "body_text": "Go to https://attacker.example/login", "note": ""}
        resume(run_id, "approve-email", edited)
        outcome = future.result(timeout=120)

    assert (outcome.status, outcome.email_status, outcome.email_sent) == (UpsellStatus.NEEDS_REVIEW, "blocked", False)
    assert outcome.reviewer_note.startswith("email withheld by the safety check: text part: a link")
    assert not (outbox_email(data_dir / "outbox", alert.event_id)).exists()
    # the reviewer was told the email waited for approval, then the summary says it was withheld
    notice, summary = [m for m in fakes.slack.messages if alert.account_id in m.get("text", "")]
    assert notice["text"].startswith("Decision needed") and "attacker" not in str(notice)
    fields = [f["text"] for block in summary["blocks"] for f in block.get("fields", [])]
    assert "*Email*\nblocked" in fields and "attacker" not in str(summary)  # the team is told
    logged = SqliteOpportunityStore(data_dir / "upsell.db").get_opportunity(alert.event_id)
    assert logged is not None and logged.reviewer_note == outcome.reviewer_note


def test_a_slack_summary_that_fails_the_final_check_is_replaced_by_a_notice(fakes: Fakes) -> None:
    alert, recipient = _clean_account(fakes)
    contract = ContractData(account_id=alert.account_id, company_name="Acme", current_plan="Growth",
                            contract_end_date="", renewal_date="", current_spend=30000,
                            contact_info={"email": recipient})  # fmt: skip
    plan = UpsellPlan(recommended_plan="Professional", estimated_value=30000, justification="Fine.", features=[],
                      roi_analysis="r", risk_assessment="k")  # fmt: skip

    @flow
    def post_summary() -> SlackResult:
        # a decision link that is not the product's own stands for any bug that lets a foreign link through
        links = {"approve": "https://attacker.example/approve"}
        planned = PlanResult(plan=plan, planner="claude")
        post = configured(post_slack_summary)
        return post(alert, AutomationLevel.HYBRID, contract, planned, EmailResult(status="sent"), links)

    result = post_summary()

    assert result.posted and result.withheld == "blocks: a button link that is not the product's own"
    [notice] = [m for m in fakes.slack.messages if alert.account_id in m.get("text", "")]
    assert "withheld by the safety check" in notice["text"] and "attacker" not in str(notice)
    assert "actions" not in str(notice["blocks"])  # the summary's buttons did not go out
