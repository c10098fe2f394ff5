"""The untrusted-text policy and the final check of outgoing messages, on their own (no Prefect run)."""

from __future__ import annotations

import unicodedata
from email import policy

import pytest

from blocks.anthropic import RuleBasedPlanner
from blocks.sources import FixtureSource
from flows.models import (
    AutomationLevel,
    ContractData,
    EmailDraft,
    EmailResult,
    PlanResult,
    UpsellPlan,
    UsageAlert,
    UsageData,
    load_catalogue,
)
from tasks.content.admission import accept_contract, accept_plan, accept_usage, plan_problem
from tasks.content.email import build_message, compose_email, subject_for
from tasks.content.outgoing import allowed_links, email_problems, slack_problems
from tasks.content.untrusted import (
    UnsafeData,
    checked_email,
    checked_number,
    clean_name,
    clean_text,
    findings,
)
from tasks.post_slack_summary import build_summary, build_withheld_notice
from tests.containment import content_failures, slack_failures
from tests.hostile_corpus import CORPUS, HOSTILE_ADDRESSES

BASE = "http://127.0.0.1:8000"
ALLOWED = allowed_links(BASE, "http://127.0.0.1:4200")
ALERT = UsageAlert(event_id="evt-policy", account_id="12345", metric_type="trade_volume", current_value=150,
                   threshold=100, severity="critical")  # fmt: skip


def _visible(text: str) -> bool:
    return not any(unicodedata.category(c) in ("Cc", "Cf", "Co", "Cn", "Cs") for c in text)


@pytest.mark.parametrize(("category", "text"), CORPUS, ids=[f"{i:03d}-{c}" for i, (c, _) in enumerate(CORPUS)])
def test_cleaned_text_carries_nothing_the_policy_forbids(category: str, text: str) -> None:
    cleaned = clean_text(text, "justification")
    assert findings(cleaned) == [] and _visible(cleaned)
    name = clean_name(text, "company_name", "NEUTRAL")
    assert name == "NEUTRAL" or (findings(name) == [] and _visible(name) and len(name) <= 80)
    assert clean_text(cleaned, "justification") == cleaned  # idempotent: cleaning again at the exit changes nothing


@pytest.mark.parametrize("address", HOSTILE_ADDRESSES)
def test_a_contact_email_is_one_address_or_the_upsell_stops(address: str) -> None:
    with pytest.raises(UnsafeData) as refused:
        checked_email(address)
    assert refused.value.field == "contact_info.email"
    assert "attacker" not in str(refused.value) and "buyer" not in str(refused.value)  # named, never quoted


def test_a_valid_contact_email_is_normalised() -> None:
    assert checked_email("Dana.Whitfield@Customer.Example.com") == "Dana.Whitfield@customer.example.com"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), -5.0, 1e300, "12", True, None])
def test_source_numbers_must_be_finite_non_negative_and_under_the_cap(value: object) -> None:
    with pytest.raises(UnsafeData, match=r"^contract\.current_spend ") as refused:
        checked_number(value, "contract.current_spend", upper=1e9)
    assert refused.value.field == "contract.current_spend"


def test_identity_comes_from_the_alert_and_the_contract_is_cleaned() -> None:
    usage = UsageData(account_id="other", metric_type="https://attacker.example", current_usage=150,
                      usage_trend="increasing", usage_period="monthly", threshold_exceeded=0.5,
                      additional_context={"threshold": 100, "note": "<!channel> see attacker.example"})  # fmt: skip
    accepted = accept_usage(usage, ALERT, max_value=1e12)
    assert (accepted.account_id, accepted.metric_type) == ("12345", "trade_volume")
    assert accepted.additional_context == {"threshold": 100.0, "note": "see"}

    contract = ContractData(
        account_id="someone-else", company_name="Acme <https://attacker.example|Login>", current_plan="Growth",
        contract_end_date="2027-03-31T00:00:00Z", renewal_date="soon, see attacker.example", current_spend=30000,
        contract_terms={"notes": "Call leak@attacker.example", "nested": {"deep": {"deeper": "x"}}},
        contact_info={"name": "Dana\u202e Whitfield", "email": "dana@customer.example.com", "title": "CTO",
                      "cc": "leak@attacker.example"},
    )  # fmt: skip
    accepted_contract = accept_contract(contract, "12345", max_spend=1e9)
    assert accepted_contract.account_id == "12345"
    assert accepted_contract.company_name == ""  # a short field with a link becomes neutral
    assert (accepted_contract.contract_end_date, accepted_contract.renewal_date) == ("2027-03-31", "")
    assert accepted_contract.contract_terms == {"notes": "Call", "nested": {"deep": {"deeper": None}}}  # depth cap
    assert accepted_contract.contact_info == {"email": "dana@customer.example.com", "name": "Dana Whitfield",
                                              "title": "CTO"}  # fmt: skip


def test_plan_value_is_capped_by_spend_and_by_the_list_price() -> None:
    catalogue = load_catalogue()
    assert catalogue.value_cap("Professional", 30000, 3.0) == 90000  # 3 x spend
    assert catalogue.value_cap("Professional", 10**9, 3.0) == 180000  # a hostile spend: 3 x list price (60,000)
    assert catalogue.value_cap("Professional", 0, 3.0) == 180000  # a free plan: the list price
    contract = ContractData(account_id="a", current_plan="Growth", contract_end_date="", renewal_date="",
                            current_spend=10**9)  # fmt: skip
    plan = UpsellPlan(recommended_plan="Professional", estimated_value=5e8, justification="j", features=[],
                      roi_analysis="r", risk_assessment="k")  # fmt: skip
    accepted = accept_plan(PlanResult(plan=plan, planner="rule-based"), contract, catalogue, max_value_ratio=3.0)
    assert accepted.plan.estimated_value == 180000 and "value capped at 180,000" in accepted.reason


def test_model_answers_are_checked_for_content_naming_the_rule_only() -> None:
    base = {"recommended_plan": "Professional", "estimated_value": 1, "justification": "Fine.", "features": [],
            "roi_analysis": "Fine.", "risk_assessment": "Fine."}  # fmt: skip
    assert plan_problem(UpsellPlan(**base)) is None
    cases = {
        "justification": ("See attacker.example/login", "justification contains a web address"),
        "roi_analysis": ("Mail leak@attacker.example", "roi_analysis contains an email address"),
        "risk_assessment": ("<b>risk</b>", "risk_assessment contains markup"),
        "features": (["ok", "javascript:alert(1)"], "features[1] contains a URI scheme"),
    }
    for field, (value, rule) in cases.items():
        assert plan_problem(UpsellPlan(**{**base, field: value})) == rule
    assert plan_problem(UpsellPlan(**{**base, "justification": "x " * 700})) == (
        "justification is longer than 1200 characters"
    )
    assert plan_problem(UpsellPlan(**{**base, "features": ["f"] * 9})) == "features lists more than 8 items"


def _draft(**changes: object) -> EmailDraft:
    source = FixtureSource()
    usage, contract = source.fetch_usage(ALERT), source.fetch_contract("12345")
    plan = RuleBasedPlanner().plan(usage, contract).plan
    links = {a: f"{BASE}/links/{a}-token" for a in ("yes", "no", "maybe")}
    draft = compose_email(usage=usage, contract=contract, plan=plan, reply_links=links,
                          unsubscribe_url=f"{BASE}/unsubscribe/token", sender_name="Sales",
                          sender_postal_address="1 Market St")  # fmt: skip
    return draft.model_copy(update=changes)


def test_the_final_check_passes_the_products_own_email_and_stops_anything_else() -> None:
    draft = _draft()
    assert email_problems(draft, ALLOWED) == []
    assert email_problems(draft, allowed_links("http://127.0.0.1:8001")) != []  # another receiver's links are foreign

    def problems(**changes: object) -> list[str]:
        return email_problems(draft.model_copy(update=changes), ALLOWED)

    assert problems(to="dana@customer.example, leak@attacker.example") == ["To: is not one valid email address"]
    assert problems(subject="Hi\r\nBcc: leak@attacker.example") == [
        "Subject: an invisible or control character",
        "Subject: an email address that is not the product's own",
    ]
    assert problems(body_text=draft.body_text + "\nhttps://attacker.example/login") == [
        "text part: a link that is not the product's own",
        "text part: a web address that is not the product's own",
    ]
    assert problems(body_text=draft.body_text + f"\n{BASE}.attacker.example/links/x")[0].startswith("text part: a link")
    assert problems(body_html=draft.body_html.replace(f"{BASE}/links/yes", "https://attacker.example")) == [
        "HTML part: a link that is not the product's own"
    ]
    assert "HTML part: a tag that is not the template's" in problems(
        body_html=draft.body_html.replace("</body>", '<img src="https://attacker.example/p.png"></body>')
    )
    assert problems(unsubscribe_url="https://attacker.example/u") == [
        "a reply or unsubscribe link that is not the product's own"
    ]


def test_subject_is_built_from_clean_parts_and_the_message_builds() -> None:
    assert subject_for("Acme\r\nBcc: leak@attacker.example", "Professional") == "Room to grow with Professional"
    assert subject_for("Acme\x00 Trading", "Professional") == "Acme Trading: room to grow with Professional"
    message = build_message(_draft(subject=subject_for("Acme\u202e\nTrading", "Growth")), from_address="a@b.example")
    assert message["Subject"] == "Acme Trading: room to grow with Growth"
    assert "\n" not in message.as_string(policy=policy.SMTP).split("Subject: ", 1)[1].split("\r\n", 1)[0]


def _summary(company: str, justification: str) -> tuple[str, list[dict]]:
    contract = ContractData(account_id="12345", company_name=company, current_plan="Growth", contract_end_date="",
                            renewal_date="", current_spend=30000)  # fmt: skip
    plan = UpsellPlan(recommended_plan="Professional", estimated_value=30000, justification=justification,
                      features=[], roi_analysis="r", risk_assessment="k")  # fmt: skip
    post = build_summary(ALERT, AutomationLevel.HYBRID, contract, PlanResult(plan=plan, planner="claude"),
                         EmailResult(status="sent"), "http://127.0.0.1:4200/runs/flow-run/r1",
                         {"approve": f"{BASE}/links/a", "reject": f"{BASE}/links/r"})  # fmt: skip
    return post.text, post.blocks


@pytest.mark.parametrize(
    "hostile",
    ["<https://attacker.example/login|Open run in Prefect>", "<!channel>", "<@U012AB3CD> & <#C1|x>", "a > b < c"],
)
def test_slack_data_is_escaped_so_no_link_or_ping_forms(hostile: str) -> None:
    text, blocks = _summary(hostile, f"Because {hostile}")
    assert slack_problems(text, blocks, ALLOWED) == []
    everything = text + str(blocks)
    assert "<!" not in everything and "<@" not in everything and "attacker" not in everything


def test_the_slack_check_stops_foreign_links_and_pings_and_the_notice_passes() -> None:
    text, blocks = _summary("Acme", "Fine.")
    assert slack_problems(text, blocks, ALLOWED) == []
    assert slack_problems(text + " <!here>", blocks, ALLOWED) == ["fallback text: a mention or channel ping"]
    foreign = [*blocks, {"type": "section", "text": {"type": "mrkdwn", "text": "<https://attacker.example|Prefect>"}}]
    assert slack_problems(text, foreign, ALLOWED) == ["blocks: a link that is not the product's own"]
    button = [{"type": "actions", "elements": [{"type": "button", "url": "https://attacker.example"}]}]
    assert slack_problems(text, button, ALLOWED) == ["blocks: a button link that is not the product's own"]
    notice = build_withheld_notice(ALERT, "http://127.0.0.1:4200/runs/flow-run/r1", ["blocks: a link"])
    assert slack_problems(notice.text, notice.blocks, ALLOWED) == []


#: Every free-text field of the CRM answer, the usage answer and Claude's answer, as (source, field).
FIELDS = [
    ("crm", "company_name"), ("crm", "current_plan"), ("crm", "contract_end_date"), ("crm", "renewal_date"),
    ("crm", "contact_name"), ("crm", "contact_title"), ("crm", "notes"), ("usage", "metric_type"),
    ("usage", "note"), ("model", "recommended_plan"), ("model", "justification"), ("model", "feature"),
    ("model", "roi_analysis"), ("model", "risk_assessment"),
]  # fmt: skip
RECIPIENT = "dana.whitfield@customer.example.com"
UI_LINK = "http://127.0.0.1:4200/runs/flow-run/r1"


def _through_the_builders(source: str, field: str, text: str) -> tuple[EmailDraft | None, dict]:
    """What the steps do with `text` in one field: admit the data, plan, build and check the email and Slack post."""
    crm = {"company_name": "Acme Trading", "current_plan": "Growth", "contract_end_date": "2027-03-31",
           "renewal_date": "2027-03-01", "notes": "Annual billing", "contact_name": "Dana Whitfield",
           "contact_title": "CTO"}  # fmt: skip
    usage_text = {"metric_type": "trade_volume", "note": "from the usage API"}
    answer = {"recommended_plan": "Professional", "justification": "Usage is 50% over.", "feature": "Real-time reports",
              "roi_analysis": "Removes the cap.", "risk_assessment": "Low."}  # fmt: skip
    {"crm": crm, "usage": usage_text, "model": answer}[source][field] = (
        f"Professional {text}" if field == "recommended_plan" else text
    )
    contract = accept_contract(
        ContractData(account_id="12345", company_name=crm["company_name"], current_plan=crm["current_plan"],
                     contract_end_date=crm["contract_end_date"], renewal_date=crm["renewal_date"],
                     current_spend=30000, contract_terms={"notes": crm["notes"]},
                     contact_info={"name": crm["contact_name"], "email": RECIPIENT, "title": crm["contact_title"]}),
        "12345", max_spend=1e9,
    )  # fmt: skip
    usage = accept_usage(
        UsageData(account_id="12345", metric_type=usage_text["metric_type"], current_usage=150,
                  usage_trend="increasing", usage_period="monthly", threshold_exceeded=0.5, growth_rate=0.35,
                  additional_context={"threshold": 100, "note": usage_text["note"]}),
        ALERT, max_value=1e12,
    )  # fmt: skip
    plan = UpsellPlan(recommended_plan=answer["recommended_plan"], estimated_value=30000.0,
                      justification=answer["justification"], features=[answer["feature"]],
                      roi_analysis=answer["roi_analysis"], risk_assessment=answer["risk_assessment"])  # fmt: skip
    catalogue = load_catalogue()
    valid = plan_problem(plan) is None and catalogue.find(plan.recommended_plan) is not None  # as ClaudePlanner
    planned = PlanResult(plan=plan, planner="claude") if valid else RuleBasedPlanner().plan(usage, contract)
    planned = accept_plan(planned, contract, catalogue, max_value_ratio=3.0)
    links = {a: f"{BASE}/links/{a}-token" for a in ("yes", "no", "maybe")}
    draft = compose_email(usage=usage, contract=contract, plan=planned.plan, reply_links=links,
                          unsubscribe_url=f"{BASE}/unsubscribe/token", sender_name="Sales",
                          sender_postal_address="1 Market St")  # fmt: skip
    post = build_summary(ALERT, AutomationLevel.FULL_AUTOMATION, contract, planned, EmailResult(status="sent"),
                         UI_LINK, {})  # fmt: skip
    # a withheld email is contained too (nothing is sent); the .eml itself is read back in test_hostile_corpus
    return (None if email_problems(draft, ALLOWED) else draft), {"text": post.text, "blocks": post.blocks}


def test_every_corpus_string_in_every_field_is_contained(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    failures: dict[str, list[str]] = {}
    withheld = 0
    for _category, text in CORPUS:
        for source, field in FIELDS:
            draft, slack = _through_the_builders(source, field, text)
            withheld += draft is None
            problems = [] if draft is None else content_failures(draft.subject, draft.body_text, draft.body_html)
            problems += [] if draft is None or draft.to == RECIPIENT else ["To is not the contact address"]
            problems += slack_failures(slack, "http://127.0.0.1:4200/runs/flow-run/")
            if problems:
                failures[f"{source}.{field} = {text!r}"] = problems
    total = len(CORPUS) * len(FIELDS)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    with capsys.disabled():  # the figure the issue asks for, in `make test`'s output
        reporter.write_line(
            f"hostile corpus, each string in each field: contained {total - len(failures)}/{total}"
            f" ({len(CORPUS)} strings x {len(FIELDS)} fields; {withheld} emails withheld by the final check)"
        )
    assert failures == {}, failures
    assert withheld == 0  # the policy cleaned every field: the final check had nothing left to stop
