"""Where untrusted data enters the upsell: the usage and contract answers, and the planner's plan.

Identity comes from trusted places (the account and the metric from the alert, the recipient from one parsed
address), numbers must be finite and under caps, and every text field goes through the untrusted-text policy.
What cannot be made safe raises `UnsafeData` with the field named: the flow stops the upsell for a human.
"""

from __future__ import annotations

import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError

from flows.models import Catalogue, ContractData, PlanResult, UpsellPlan, UsageAlert, UsageData
from tasks.content.untrusted import (
    CAPS,
    MAX_FEATURES,
    UnsafeData,
    checked_email,
    checked_number,
    clean_data,
    clean_date,
    clean_name,
    clean_text,
    findings,
    normalise,
)

#: The model's text fields and the cap each must keep (a longer answer is an invalid answer).
PLAN_TEXT_FIELDS = ("recommended_plan", "justification", "roi_analysis", "risk_assessment")


def malformed(exc: ValidationError, source: str) -> UnsafeData:
    """A source answer that does not fit our models, as UnsafeData naming the first bad field (not its value)."""
    first = exc.errors()[0] if exc.errors() else {"loc": ()}
    field = ".".join(str(part) for part in first["loc"]) or "answer"
    return UnsafeData(f"{source}.{field}", "is missing or malformed")


def accept_usage(usage: UsageData, alert: UsageAlert, *, max_value: float) -> UsageData:
    """The usage answer with the alert's identity, checked numbers and cleaned context."""
    context = clean_data(usage.additional_context) or {}
    for key in ("threshold", "previous_usage"):
        if context.get(key) is not None:
            context[key] = checked_number(context[key], f"usage.{key}", upper=max_value)
    return UsageData(
        account_id=alert.account_id,  # identity from the alert, whatever the source answered
        metric_type=alert.metric_type,
        current_usage=checked_number(usage.current_usage, "usage.current_usage", upper=max_value),
        usage_trend=usage.usage_trend,
        usage_period=usage.usage_period,
        threshold_exceeded=checked_number(
            usage.threshold_exceeded, "usage.threshold_exceeded", upper=max_value, lower=-1.0
        ),
        growth_rate=checked_number(usage.growth_rate, "usage.growth_rate", upper=max_value, lower=-1.0),
        additional_context=context,
    )


def accept_contract(contract: ContractData, account_id: str, *, max_spend: float) -> ContractData:
    """The CRM answer with the requested account, one validated recipient, a checked spend and clean text."""
    info = contract.contact_info
    return ContractData(
        account_id=account_id,
        company_name=clean_name(contract.company_name, "company_name"),
        current_plan=clean_name(contract.current_plan, "current_plan"),
        contract_end_date=clean_date(contract.contract_end_date),
        renewal_date=clean_date(contract.renewal_date),
        current_spend=checked_number(contract.current_spend, "contract.current_spend", upper=max_spend),
        contract_terms=clean_data(contract.contract_terms) or {},
        contact_info={
            "email": checked_email(info.get("email", ""), "contract.contact_info.email"),
            "name": clean_name(info.get("name", ""), "contact_name"),
            "title": clean_name(info.get("title", ""), "contact_title"),
            **{k: v for k, v in located(info).items() if v},
        },
    )


def located(info: dict[str, str]) -> dict[str, str]:
    """Where the contact is, when the CRM says so in a form we can use: time zone and country."""
    return {"timezone": checked_zone(info.get("timezone", "")), "country": checked_country(info.get("country", ""))}


_ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}")


def checked_zone(value: object) -> str:
    """The contact's IANA time zone when it is one (send windows use it), else '' (the window then runs in UTC)."""
    name = str(value or "").strip()
    if not _ZONE_NAME.fullmatch(name):
        return ""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return ""
    return name


def checked_country(value: object) -> str:
    """The contact's ISO 3166 alpha-2 country code (for its public holidays), else ''."""
    code = str(value or "").strip().upper()
    return code if re.fullmatch(r"[A-Z]{2}", code) else ""


def plan_problem(plan: UpsellPlan) -> str | None:
    """The first content rule a model's plan breaks (named, never quoted), or None: no link, address, markup
    or chat control in any text field, each within its cap."""
    fields: list[tuple[str, str, str]] = [(name, name, getattr(plan, name)) for name in PLAN_TEXT_FIELDS]
    if len(plan.features) > MAX_FEATURES:
        return f"features lists more than {MAX_FEATURES} items"
    fields += [(f"features[{i}]", "feature", feature) for i, feature in enumerate(plan.features)]
    for label, cap_key, value in fields:
        text = normalise(value)
        rules = findings(text)
        if rules:
            return f"{label} contains {rules[0]}"
        if len(text) > CAPS[cap_key]:
            return f"{label} is longer than {CAPS[cap_key]} characters"
    return None


def accept_plan(
    result: PlanResult, contract: ContractData, catalogue: Catalogue, *, max_value_ratio: float
) -> PlanResult:
    """Either planner's plan, made safe: a catalogue plan, a value within the cap, clean text within caps."""
    plan = result.plan
    listed = catalogue.find(normalise(plan.recommended_plan))
    if listed is None:
        raise UnsafeData("plan.recommended_plan", "is not a plan of the catalogue")
    value = checked_number(plan.estimated_value, "plan.estimated_value", upper=float("inf"))
    bound = catalogue.value_cap(listed.name, contract.current_spend, max_value_ratio)
    reason = clean_text(result.reason, "reason")
    if value > bound:
        value = round(bound, 2)
        reason += f" (value capped at {bound:,.0f})"
    features = [f for f in (clean_text(x, "feature") for x in plan.features[:MAX_FEATURES]) if f]
    cleaned: dict[str, Any] = {name: clean_text(getattr(plan, name), name) for name in PLAN_TEXT_FIELDS[1:]}
    safe = UpsellPlan(
        recommended_plan=listed.name,
        estimated_value=value,
        features=features,
        **{k: v or "See the run in Prefect for the figures." for k, v in cleaned.items()},
    )
    return PlanResult(plan=safe, planner=result.planner, reason=reason)
