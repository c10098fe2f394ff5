"""Step 3: ask the planner (Claude when configured, else the rule-based planner) for an upsell plan."""

from __future__ import annotations

from prefect import task

from blocks.registry import resolve
from flows.models import ContractData, PlanResult, UsageData, load_catalogue
from tasks.content.admission import accept_plan, plan_problem
from tasks.runtime.policy import SEND_STEP, step_options
from tasks.runtime.settings import get_settings


@task(**step_options("ask_claude_for_plan", SEND_STEP))
def ask_claude_for_plan(usage: UsageData, contract: ContractData) -> PlanResult:
    """Produce a validated upsell plan, recording which planner made it and why (its text cleaned, value capped)."""
    planner = resolve("planner", get_settings()).client
    result = planner.plan(usage, contract, review=plan_problem)  # a model's plan must pass the content policy
    return accept_plan(result, contract, load_catalogue(), max_value_ratio=planner.max_value_ratio)
