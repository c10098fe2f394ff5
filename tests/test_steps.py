"""Each step's logic on its own: models, planner, fixture source, email, links, retry policy, run_once."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser

import httpx
import pytest
from pydantic import ValidationError

from blocks.anthropic import RuleBasedPlanner
from blocks.interfaces import PermanentError, SendOutcomeUnknown
from blocks.mongo import SqliteOpportunityStore
from blocks.ses import OutboxEmailSender
from blocks.sources import FixtureSource
from flows.models import (
    AutomationLevel,
    ContractData,
    Severity,
    UpsellPlan,
    UpsellStage,
    UsageAlert,
    automation_level_for,
    load_catalogue,
)
from tasks.content.email import build_message, compose_email
from tasks.create_zoom_meeting import next_business_slot
from tasks.runtime.links import InvalidToken, LinkToken, sign_token, verify_token
from tasks.runtime.once import run_once
from tasks.runtime.policy import is_permanent
from tasks.runtime.progress import render_journal
from tasks.runtime.settings import UpsellSettings

SEED = UsageAlert(event_id="001", account_id="12345", metric_type="trade_volume", current_value=150, threshold=100)


def test_severity_maps_to_automation_level_and_is_configurable(monkeypatch):
    assert automation_level_for(Severity.CRITICAL) is AutomationLevel.FULL_AUTOMATION
    assert automation_level_for(Severity.HIGH) is AutomationLevel.HYBRID
    assert automation_level_for(Severity.MEDIUM) is AutomationLevel.HUMAN_INTERVENTION
    assert automation_level_for(Severity.LOW) is AutomationLevel.HUMAN_INTERVENTION
    monkeypatch.setenv("UPSELL_SEVERITY_LEVELS", '{"high": "FULL_AUTOMATION"}')
    mapping = UpsellSettings().severity_levels
    assert automation_level_for(Severity.HIGH, mapping) is AutomationLevel.FULL_AUTOMATION


def test_names_follow_the_reference_design():
    alert = SEED.model_copy(update={"occurred_at": datetime(2024, 1, 15, 14, 0, tzinfo=UTC)})
    assert alert.run_name == "upsell-12345-001-20240115-140000"
    assert alert.opportunity_id == "opp_12345_001"


@pytest.mark.parametrize(
    "changes",
    [{"recommended_plan": "  "}, {"estimated_value": -1}, {"estimated_value": math.inf},
     {"estimated_value": math.nan}, {"features": "SSO"}],
)
def test_upsell_plan_is_validated(changes):
    plan = {"recommended_plan": "Pro", "estimated_value": 10, "justification": "j", "features": ["a"],
            "roi_analysis": "r", "risk_assessment": "k"}
    with pytest.raises(ValidationError):
        UpsellPlan.model_validate({**plan, **changes})


@pytest.mark.parametrize("changes", [{"event_id": "a b"}, {"event_id": "x" * 201}, {"account_id": ""},
                                     {"threshold": -1}, {"current_value": math.nan}, {"severity": "urgent"},
                                     {"unexpected": 1}])
def test_usage_alert_is_validated(changes):
    with pytest.raises(ValidationError):
        UsageAlert.model_validate({**SEED.model_dump(), **changes})


def test_fixture_source_and_rule_based_planner_cite_the_numbers():
    source = FixtureSource()
    usage = source.fetch_usage(SEED)
    contract = source.fetch_contract("12345")
    assert usage.current_usage == 150 and usage.threshold_exceeded == 0.5
    assert usage.usage_trend == "increasing" and usage.growth_rate == pytest.approx(0.3514, abs=1e-3)
    assert contract.current_plan == "Growth" and contract.contact_email.endswith("example.com")
    result = RuleBasedPlanner().plan(usage, contract)
    assert result.planner == "rule-based"
    plan = result.plan
    assert plan.recommended_plan == "Professional"  # the tier after Growth
    # uplift to the next tier (60,000 - 30,000) + 25 % of its price per 100 % growth (35.14 %)
    assert plan.estimated_value == pytest.approx(30000 + 60000 * 0.3514 * 0.25, rel=1e-3)
    for figure in ("150", "100", "50 % over", "up 35 % on last month", "30,000", "60,000"):
        assert figure in plan.justification
    assert plan.features == load_catalogue().find("Professional").features
    assert RuleBasedPlanner().plan(usage, contract) == result  # deterministic


def test_top_tier_accounts_are_sold_capacity_not_a_missing_tier():
    contract = ContractData(account_id="x", current_plan="Enterprise Plus", contract_end_date="", renewal_date="",
                            current_spend=200000)
    usage = FixtureSource().fetch_usage(SEED.model_copy(update={"account_id": "x"}))
    plan = RuleBasedPlanner().plan(usage, contract).plan
    assert plan.recommended_plan == "Enterprise Plus" and plan.estimated_value > 0


def test_unknown_accounts_get_deterministic_synthetic_data():
    alert = SEED.model_copy(update={"account_id": "zz-1"})
    first, second = FixtureSource().fetch_usage(alert), FixtureSource().fetch_usage(alert)
    assert first == second and first.additional_context["synthetic"] is True


def test_email_is_a_real_rfc5322_message_with_links_and_one_click_unsubscribe(tmp_path):
    source = FixtureSource()
    usage, contract = source.fetch_usage(SEED), source.fetch_contract("12345")
    plan = RuleBasedPlanner().plan(usage, contract).plan
    links = {a: f"http://r.example/links/{a}-{'x' * 150}" for a in ("yes", "no", "maybe")}
    draft = compose_email(usage=usage, contract=contract, plan=plan, reply_links=links,
                          unsubscribe_url="http://r.example/unsubscribe/" + "t" * 200, sender_name="Sales",
                          sender_postal_address="1 Market St")
    sender = OutboxEmailSender(tmp_path)
    message = build_message(draft, from_address=sender.from_address, from_name=sender.from_name)
    message_id = sender.send(message, idempotency_key="e1-email")
    assert sender.send(message, idempotency_key="e1-email") == message_id  # same key, same email
    files = list(tmp_path.glob("*.eml"))
    assert len(files) == 1
    parsed = BytesParser(policy=policy.default).parse(files[0].open("rb"))
    assert parsed["To"] == contract.contact_email and parsed["Message-ID"] == message_id
    assert parsed["List-Unsubscribe"] == f"<{draft.unsubscribe_url}>"  # plain URL, not an encoded-word
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text = parsed.get_body(("plain",)).get_content()
    html = parsed.get_body(("html",)).get_content()
    for url in links.values():
        assert url in text and url in html
    assert "1 Market St" in text and "Professional" in html and "Dana" in text


def test_link_tokens_are_signed_and_expire():
    token = LinkToken(flow_run_id="r1", wait="reply", value={"reply": "yes"}, expires_at=2_000_000_000)
    signed = sign_token(token, "secret")
    assert verify_token(signed, "secret", now=1_000_000_000) == token
    with pytest.raises(InvalidToken, match="signature"):
        verify_token(signed, "other-secret", now=1_000_000_000)
    with pytest.raises(InvalidToken) as expired:
        verify_token(signed, "secret", now=3_000_000_000)
    assert expired.value.expired
    middle = len(signed) // 2
    tampered = signed[:middle] + ("A" if signed[middle] != "A" else "B") + signed[middle + 1 :]
    with pytest.raises(InvalidToken):
        verify_token(tampered, "secret", now=1_000_000_000)
    with pytest.raises(InvalidToken, match="malformed"):
        verify_token("garbage", "secret")


def _status_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://x")
    return httpx.HTTPStatusError("x", request=request, response=httpx.Response(status, request=request))


def test_retry_policy_stops_on_validation_errors_and_4xx_only():
    assert is_permanent(PermanentError("no"))
    with pytest.raises(ValidationError) as invalid:
        UpsellPlan.model_validate({})
    assert is_permanent(invalid.value)
    assert is_permanent(_status_error(400)) and is_permanent(_status_error(404))
    assert not is_permanent(_status_error(429)) and not is_permanent(_status_error(503))
    assert not is_permanent(httpx.ConnectError("down")) and not is_permanent(TimeoutError())


def test_run_once_semantics(tmp_path):
    store = SqliteOpportunityStore(tmp_path / "s.db")
    calls: list[int] = []

    def send() -> dict:
        calls.append(1)
        return {"message_id": "m1"}

    assert run_once(store, "e", "email", send).status == "done"
    assert run_once(store, "e", "email", send).status == "already" and len(calls) == 1

    def fails() -> dict:
        raise httpx.ConnectError("refused")

    with pytest.raises(httpx.ConnectError):
        run_once(store, "e", "slack", fails)
    assert store.get_record("e", "slack")["status"] == "released"
    assert run_once(store, "e", "slack", send).status == "done"  # a definite failure may be retried

    def unknown() -> dict:
        raise SendOutcomeUnknown("read timeout after the request went out")

    assert run_once(store, "e", "zoom", unknown).status == "unknown"
    assert run_once(store, "e", "zoom", send).status == "unknown" and len(calls) == 2  # never repeated


def test_meetings_are_booked_on_a_weekday_afternoon():
    friday_evening = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)
    slot = next_business_slot(friday_evening, 48)
    assert slot.weekday() < 5 and slot.hour == 15 and slot > friday_evening


def test_stage_table_lists_every_state_of_the_design():
    journal = [{"stage": UpsellStage.STARTED.value, "details": {}},
               {"stage": UpsellStage.EMAIL_SENT.value, "details": {"message_id": "<m@x>"}}]
    markdown = render_journal(SEED, journal)
    for stage in UpsellStage:
        assert f"| {stage.value} |" in markdown
    assert "**Current stage:** Email Sent" in markdown and "<m@x>" not in markdown  # an id for machines, not people


def test_production_needs_an_explicit_link_secret(monkeypatch):
    monkeypatch.setenv("UPSELL_ENVIRONMENT", "production")
    monkeypatch.setenv("UPSELL_PUBLIC_BASE_URL", "https://upsell.example.com")
    monkeypatch.setenv("UPSELL_SENDER_POSTAL_ADDRESS", "Acme Ltd, 2 Side Street, Springfield")
    monkeypatch.delenv("UPSELL_LINK_SECRET")  # no generated secret in production: it must be given
    with pytest.raises(ValidationError, match="UPSELL_LINK_SECRET must be set"):
        UpsellSettings()
    monkeypatch.setenv("UPSELL_LINK_SECRET", "a-real-secret-of-at-least-32-characters")
    assert UpsellSettings().link_secret.get_secret_value() == "a-real-secret-of-at-least-32-characters"
