"""The deterministic rule-based planner: the default when no Anthropic block is saved, and Claude's fallback."""

from __future__ import annotations

from flows.models import ContractData, PlanResult, UpsellPlan, UsageData
from tasks.catalogue import Catalogue, load_catalogue

#: An upsell is worth at most this many times the account's spend (and the plan's list price).
DEFAULT_VALUE_RATIO = 3.0
#: Share of the next tier's price added per 100 % of usage growth (growth is capped at 100 %).
GROWTH_WEIGHT = 0.25
PERIOD_WORD = {"daily": "day", "weekly": "week", "monthly": "month"}


class RuleBasedPlanner:
    """Next plan tier from the catalogue; value from current spend and usage growth; numbers cited."""

    def __init__(
        self,
        catalogue: Catalogue | None = None,
        reason: str = "no Anthropic block configured",
        max_value_ratio: float = DEFAULT_VALUE_RATIO,
    ) -> None:
        self.catalogue = catalogue or load_catalogue()
        self.reason = reason
        self.max_value_ratio = max_value_ratio

    def __repr__(self) -> str:
        return "RuleBasedPlanner(catalogue tiers: " + ", ".join(self.catalogue.names) + ")"

    def plan(self, usage: UsageData, contract: ContractData) -> PlanResult:
        current = self.catalogue.find(contract.current_plan)
        target = self.catalogue.next_tier(contract.current_plan)
        at_top = current is not None and target.name == current.name
        growth = min(max(usage.growth_rate, 0.0), 1.0)
        uplift = max(target.annual_price - contract.current_spend, 0.0)
        if at_top:  # already on the top tier: sell capacity in proportion to the overage
            uplift = contract.current_spend * max(usage.threshold_exceeded, 0.0)
        value = round(uplift + target.annual_price * growth * GROWTH_WEIGHT, 2)
        currency = self.catalogue.currency
        over_pct = usage.threshold_exceeded * 100
        threshold = usage.additional_context.get("threshold")
        justification = (
            f"{usage.metric_type} is at {usage.current_usage:,.0f}"
            + (f" against a threshold of {float(threshold):,.0f}" if threshold is not None else "")
            + f" ({over_pct:.0f}% over), {usage.usage_trend} {usage.growth_rate * 100:.0f}% per"
            f" {PERIOD_WORD[usage.usage_period]}. The account pays"
            f" {currency} {contract.current_spend:,.0f}/yr on {contract.current_plan or 'its current plan'};"
            f" {target.name} lists at"
            f" {currency} {target.annual_price:,.0f}/yr."
        )
        roi = (
            f"Moving to {target.name} adds {currency} {value:,.0f}/yr and removes the {usage.metric_type} cap"
            f" that the account exceeds by {over_pct:.0f}%."
        )
        risk = (
            "Low: usage keeps growing."
            if usage.usage_trend == "increasing"
            else ("Medium: usage is not growing, so the overage may be temporary.")
        )
        if contract.renewal_date:
            risk += f" Renewal is due {contract.renewal_date}."
        plan = UpsellPlan(
            recommended_plan=target.name if not at_top else f"{target.name}",
            estimated_value=value,
            justification=justification,
            features=list(target.features),
            roi_analysis=roi,
            risk_assessment=risk,
        )
        return PlanResult(plan=plan, planner="rule-based", reason=self.reason)
