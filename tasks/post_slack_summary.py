"""Step 5: post a summary to the sales team's Slack channel (non-critical)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.runtime import flow_run
from prefect.settings import PREFECT_UI_URL

from flows.models import AutomationLevel, ContractData, EmailResult, PlanResult, SlackResult, UsageAlert
from tasks.integrations import resolve
from tasks.interfaces import SlackPost
from tasks.once import run_once
from tasks.policy import FETCH_TIMEOUT_S, step_options

SLACK_STEP = "post_slack_summary"


def run_url(flow_run_id: str) -> str:
    """The flow run's page in the Prefect UI."""
    base = (PREFECT_UI_URL.value() or "http://127.0.0.1:4200").rstrip("/")
    return f"{base}/runs/flow-run/{flow_run_id}"


def build_summary(
    alert: UsageAlert,
    level: AutomationLevel,
    contract: ContractData,
    plan: PlanResult,
    email: EmailResult,
    run_link: str,
    decision_links: dict[str, str],
) -> SlackPost:
    """Block Kit summary: account, plan, value, the run in the Prefect UI, and decision links if any."""
    value = f"${plan.plan.estimated_value:,.0f}/yr"
    text = (
        f"Upsell for {contract.company_name or alert.account_id} ({alert.account_id}): "
        f"{contract.current_plan} -> {plan.plan.recommended_plan}, est. {value} [{level.value}]"
    )
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Upsell opportunity: {alert.account_id}"}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Account*\n{contract.company_name or alert.account_id}"},
                {"type": "mrkdwn", "text": f"*Plan*\n{contract.current_plan} → {plan.plan.recommended_plan}"},
                {"type": "mrkdwn", "text": f"*Estimated value*\n{value}"},
                {"type": "mrkdwn", "text": f"*Automation*\n{level.value}"},
                {"type": "mrkdwn", "text": f"*Trigger*\n{alert.metric_type} ({alert.severity.value})"},
                {"type": "mrkdwn", "text": f"*Email*\n{email.status}"},
            ],
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": plan.plan.justification[:2900]}},
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"Planner: {plan.planner} · <{run_link}|Open run in Prefect>"}],
        },
    ]
    if decision_links:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": label.title()},
                        "url": url,
                        **({"style": "primary"} if label == "approve" else {"style": "danger"}),
                    }
                    for label, url in decision_links.items()
                ],
            }
        )
    return SlackPost(text=text, blocks=blocks)


@task(name="post_slack_summary", **step_options(FETCH_TIMEOUT_S))
def post_slack_summary(
    alert: UsageAlert,
    level: AutomationLevel,
    contract: ContractData,
    plan: PlanResult,
    email: EmailResult,
    decision_links: dict[str, str],
) -> SlackResult:
    """Tell the sales team about the upsell, once per event."""
    logger = get_run_logger()
    message = build_summary(alert, level, contract, plan, email, run_url(str(flow_run.get_id())), decision_links)
    notifier = resolve("slack").client
    store = resolve("store").client
    try:
        done = run_once(
            store, alert.event_id, SLACK_STEP, lambda: dict(zip(("channel", "ts"), notifier.post(message), strict=True))
        )
    finally:
        store.close()
    provider = type(notifier).__name__
    if done.status == "unknown":
        return SlackResult(posted=False, provider=provider, error=done.detail)
    result = done.result or {}
    logger.info(
        "Slack summary %s in %s", "posted" if done.status == "done" else "already posted", result.get("channel")
    )
    return SlackResult(posted=True, channel=result.get("channel", ""), ts=result.get("ts"), provider=provider)
