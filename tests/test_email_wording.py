"""The upsell email reads as written to the customer (issue 30, point 4): the trend matches the figures and is said
in words, amounts are written for the reader, and no internal phrasing reaches it, at every automation level."""

from __future__ import annotations

import json
import re
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client

from blocks.anthropic import RuleBasedPlanner
from blocks.sources import FixtureSource, build_usage, growth_between
from flows import inputs
from flows.models import AutomationLevel, ContractData, EmailApproval, EmailDraft, UsageAlert, UsageData
from tasks.content.email import figure, yearly_amount
from tasks.content.outgoing import allowed_links, email_problems
from tasks.runtime.settings import get_settings
from tasks.send_email_draft import draft_email
from tests.support import find_run_id, outbox_email, read_run, resume, wait_until_paused

#: Phrases of an internal note, never of an email to a customer.
FORBIDDEN = ("the account", "threshold", "pays", "trade_volume", "trade_value", "% over", "decreasing -", "/yr")
NEGATIVE_PERCENT = re.compile(r"-\s?\d+\s?%")

#: The bundled demo accounts, one per trend: (account, metric, the trend sentence, the amount they pay).
GROWTH = ("12345", "trade_volume", "reached 150 this month, up 35 % on last month", "$30,000 a year")
DECLINE = ("45678", "trade_volume", "reached 88,000 this month, down 3 % on last month", "$120,000 a year")
FLAT = ("56789", "trade_value", "reached 3,100,000 this month, about the same as last month", "$30,000 a year")


def _alert(account: str, metric: str, **changes: Any) -> UsageAlert:
    return UsageAlert(event_id=f"evt-{uuid.uuid4().hex[:12]}", account_id=account, metric_type=metric, **changes)


def _draft(alert: UsageAlert, template: str = "upsell_email") -> EmailDraft:
    """The email as the flow drafts it, from the fixture source and the rule-based planner."""
    source = FixtureSource()
    usage, contract = source.fetch_usage(alert), source.fetch_contract(alert.account_id)
    return draft_email(alert, usage, contract, RuleBasedPlanner().plan(usage, contract).plan, template=template)


def wording_problems(text: str) -> list[str]:
    """What in `text` is not written to the customer."""
    lowered = text.lower()
    found = [f"says {phrase!r}" for phrase in FORBIDDEN if phrase in lowered]
    found += [f"says {match!r}" for match in NEGATIVE_PERCENT.findall(text)]
    return found + ([] if "your" in lowered else ["never says 'your'"])


# ---- the trend, where it is computed ----


@pytest.mark.parametrize(
    ("current", "previous", "growth"),
    [(150, 111, 0.3514), (88000, 91000, -0.033), (3_100_000, 3_100_000, 0.0), (150, 0, None), (150, None, None)],
    ids=["growth", "decline", "flat", "previous-0", "previous-missing"],
)
def test_growth_compares_the_current_figure_with_the_previous_one(
    current: float, previous: float | None, growth: float | None
) -> None:
    found = growth_between(current, previous)
    assert found == (None if growth is None else pytest.approx(growth, abs=1e-3))


def test_an_alert_reading_off_the_sources_series_claims_no_trend() -> None:
    # The email: an alert of 300 (threshold 100) on the account whose source reads 88,000 after 91,000.
    # Set against 91,000 it said "decreasing -100% per month".
    usage = FixtureSource().fetch_usage(_alert("45678", "trade_volume", current_value=300, threshold=100))
    assert (usage.current_usage, usage.threshold_exceeded) == (300, 2.0)
    assert (usage.growth_rate, usage.usage_trend, usage.change_in_words()) == (0.0, "stable", None)
    assert usage.additional_context["previous_usage"] is None


def test_an_alert_reading_of_the_same_series_keeps_the_sources_trend() -> None:
    # an alert fired on crossing 100 at 101; the source, read later, has 150 after 111: usage grew 35 %
    usage = build_usage(_alert("12345", "trade_volume", current_value=101), 150, 111, 100, "monthly", {})
    assert usage.current_usage == 101 and usage.usage_trend == "increasing"
    assert usage.growth_rate == pytest.approx(0.3514, abs=1e-4)
    assert usage.change_in_words() == "up 35 % on last month"


@pytest.mark.parametrize("previous", [None, 0.0])
def test_no_previous_figure_no_trend(previous: float | None) -> None:
    usage = build_usage(_alert("12345", "trade_volume"), 150, previous, 100, "monthly", {})
    assert (usage.growth_rate, usage.usage_trend, usage.change_in_words()) == (0.0, "stable", None)


@pytest.mark.parametrize(
    ("growth", "period", "words"),
    [
        (0.3514, "monthly", "up 35 % on last month"),
        (-0.12, "monthly", "down 12 % on last month"),
        (0.01, "monthly", "about the same as last month"),
        (-0.004, "daily", "about the same as yesterday"),
        (0.6, "weekly", "up 60 % on last week"),
        (-0.5, "daily", "down 50 % on yesterday"),
        (14.0, "monthly", "up 1,400 % on last month"),
    ],
)
def test_the_change_in_words(growth: float, period: str, words: str) -> None:
    usage = UsageData(account_id="a", metric_type="m", current_usage=1, usage_trend="stable", usage_period=period,  # type: ignore[arg-type]
                      threshold_exceeded=0, growth_rate=growth, additional_context={"previous_usage": 10})  # fmt: skip
    assert usage.change_in_words() == words
    without = usage.model_copy(update={"additional_context": {}})
    assert without.change_in_words() is None  # a source in our own shape that gave no previous figure


def test_amounts_and_figures_are_written_for_the_reader() -> None:
    assert yearly_amount(120000, "USD") == "$120,000 a year"
    assert yearly_amount(30000, "eur") == "€30,000 a year" and yearly_amount(30000, "GBP") == "£30,000 a year"
    assert yearly_amount(30000, "CHF") == "30,000 CHF a year"
    assert yearly_amount(30000, None) is None and yearly_amount(30000, "dollars") is None  # unsaid, not guessed
    assert yearly_amount(0, "USD") is None
    assert (figure(35271.0), figure(3_100_000), figure(2.5), figure(0.25)) == ("35,271", "3,100,000", "2.5", "0.25")


# ---- the drafted email ----


@pytest.mark.parametrize("template", ["upsell_email", "upsell_short"])
@pytest.mark.parametrize("case", [GROWTH, DECLINE, FLAT], ids=["growth", "decline", "flat"])
def test_the_drafted_email_is_written_to_the_customer(case: tuple[str, str, str, str], template: str) -> None:
    account, metric, trend, amount = case
    draft = _draft(_alert(account, metric), template)
    for part in (draft.message, draft.body_text, draft.body_html):
        assert wording_problems(part) == []
    assert trend in draft.message and amount in draft.message
    assert draft.message.startswith("Hi ") and "Your team's " + metric.replace("_", " ") in draft.message
    assert email_problems(draft, allowed_links(get_settings().public_base_url)) == []
    assert all(url in draft.body_text for url in draft.reply_links.values())
    assert draft.unsubscribe_url in draft.body_html and get_settings().sender_postal_address in draft.body_text


def test_no_trend_sentence_without_a_previous_figure() -> None:
    source = FixtureSource()
    alert = _alert("12345", "trade_volume")
    usage = build_usage(alert, 150, None, 100, "monthly", {})
    contract = source.fetch_contract("12345")
    draft = draft_email(alert, usage, contract, RuleBasedPlanner().plan(usage, contract).plan)
    assert "reached 150 this month. Your Growth plan ($30,000 a year) includes 100 a month." in draft.message
    assert " on last month" not in draft.message and "same as" not in draft.message
    assert wording_problems(draft.message) == []


def test_the_planners_notes_stay_out_of_the_email() -> None:
    alert = _alert(*GROWTH[:2])
    source = FixtureSource()
    usage, contract = source.fetch_usage(alert), source.fetch_contract("12345")
    plan = RuleBasedPlanner().plan(usage, contract).plan
    assert "up 35 % on last month" in plan.justification  # the sales team's note states the trend rightly too
    draft = draft_email(alert, usage, contract, plan)
    for note in (plan.justification, plan.roi_analysis, plan.risk_assessment):
        assert note not in draft.body_text
    assert "lists at" not in draft.body_text and "35,271" not in draft.body_text  # the upsell's value is ours


def test_a_contract_in_another_currency_is_written_in_it() -> None:
    alert = _alert(*GROWTH[:2])
    source = FixtureSource()
    usage = source.fetch_usage(alert)
    contract: ContractData = source.fetch_contract("12345")
    for code, amount in (("EUR", "€30,000 a year"), ("CHF", "30,000 CHF a year")):
        priced = contract.model_copy(update={"contract_terms": {**contract.contract_terms, "currency": code}})
        draft = draft_email(alert, usage, priced, RuleBasedPlanner().plan(usage, priced).plan)
        assert f"Your Growth plan ({amount}) includes 100 a month." in draft.message


# ---- at each automation level, through the real flow ----


def _form_default(run_id: UUID, field: str, timeout_s: float = 10) -> Any:
    """A field's initial value in the paused run's form (Prefect saves the schema a moment after the pause)."""
    keyset = read_run(run_id).state.state_details.run_input_keyset  # type: ignore[union-attr]
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            try:
                schema = json.loads(client.read_flow_run_input(run_id, keyset["schema"]))
                return schema["properties"][field]["default"]
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


#: How the test answers each wait after the email: no reply, nothing approved, so the run ends.
ENDING_ANSWERS = {
    "reply": {"reply": "no"},
    "review": {"approved": False, "estimated_value": 0, "note": "test"},
    "approve-opportunity": {"approved": False, "estimated_value": 0},
}


def _finish(future: Future[Any], run_id: UUID, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not future.done() and time.monotonic() < deadline:
        state = read_run(run_id).state
        key = state.state_details.pause_key if state is not None and state.is_paused() else None
        if key in ENDING_ANSWERS:
            resume(run_id, key, ENDING_ANSWERS[key])
        time.sleep(0.3)
    future.result(timeout=5)


@pytest.mark.parametrize(
    "level", [AutomationLevel.FULL_AUTOMATION, AutomationLevel.HYBRID, AutomationLevel.HUMAN_INTERVENTION]
)
def test_the_email_the_customer_receives_at_each_level(level: AutomationLevel, data_dir: Path) -> None:
    from flows.upsell import upsell

    account, metric, trend, amount = GROWTH
    alert = _alert(account, metric)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(upsell, alert, automation_level=level)
        run_id = find_run_id(alert.run_name)
        if level is AutomationLevel.HUMAN_INTERVENTION:
            wait_until_paused(run_id, "approve-email")
            initial = _form_default(run_id, "body_text")  # what the reviewer is shown to approve or edit
            assert trend in initial and amount in initial and wording_problems(initial) == []
            resume(run_id, "approve-email", {"approved": True})
        wait_until_paused(run_id, "reply")
        path = outbox_email(data_dir / "outbox", alert.event_id)
        with path.open("rb") as handle:
            sent = BytesParser(policy=policy.default).parse(handle)
        _finish(future, run_id)
    text = sent.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = sent.get_body(("html",)).get_content()  # type: ignore[union-attr]
    for part in (text, html, str(sent["Subject"])):
        assert [p for p in wording_problems(part) if p != "never says 'your'"] == []
    assert trend in text and amount in text and "Your team's trade volume" in text
    assert "<strong>150</strong> this month, up 35 % on last month" in html and amount in html
    assert "Unsubscribe" in text and html.count("/links/") == 3


def test_the_approval_form_starts_from_the_drafted_message() -> None:
    alert = _alert(*GROWTH[:2])
    source = FixtureSource()
    usage, contract = source.fetch_usage(alert), source.fetch_contract("12345")
    plan = RuleBasedPlanner().plan(usage, contract).plan
    draft = draft_email(alert, usage, contract, plan)
    request = inputs.email_approval(draft, plan, timeout_s=60)
    assert request.initial["body_text"] == draft.message and wording_problems(draft.message) == []
    unchanged = inputs.approved_draft(draft, EmailApproval(approved=True, body_text=draft.message))
    assert unchanged.body_text == draft.body_text  # approved as drafted: sent as drafted
