"""Step 3: ask the planner (Claude when configured, else the rule-based planner) for an upsell plan."""

from __future__ import annotations

from prefect import task

from flows.models import ContractData, PlanResult, UsageData
from tasks.integrations import resolve
from tasks.policy import SEND_TIMEOUT_S, step_options


@task(name="ask_claude_for_plan", **step_options(SEND_TIMEOUT_S))
def ask_claude_for_plan(usage: UsageData, contract: ContractData) -> PlanResult:
    """Produce a validated upsell plan, recording which planner made it and why."""
    return resolve("planner").client.plan(usage, contract)
