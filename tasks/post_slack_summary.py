"""Step 5: post a summary to the sales team's Slack channel (non-critical)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.runtime import flow_run
from prefect.settings import PREFECT_UI_URL

from blocks.interfaces import SlackPost
from blocks.registry import resolve
from flows.models import AutomationLevel, ContractData, EmailResult, PlanResult, SlackResult, UsageAlert
from tasks.content.outgoing import allowed_links, decision_buttons, mrkdwn, slack_problems
from tasks.content.untrusted import clean_name, clean_text
from tasks.runtime.once import run_once
from tasks.runtime.policy import FETCH_STEP, step_options
from tasks.runtime.settings import UpsellSettings, get_settings

SLACK_STEP = "post_slack_summary"


def ui_base_url() -> str:
    """The Prefect UI's base URL (PREFECT_UI_URL, else the local server's default)."""
    return (PREFECT_UI_URL.value() or "http://127.0.0.1:4200").rstrip("/")


def run_url(flow_run_id: str) -> str:
    """The flow run's page in the Prefect UI."""
    return f"{ui_base_url()}/runs/flow-run/{flow_run_id}"


def build_summary(
    alert: UsageAlert,
    level: AutomationLevel,
    contract: ContractData,
    plan: PlanResult,
    email: EmailResult,
    run_link: str,
    decision_links: dict[str, str],
) -> SlackPost:
    """Block Kit summary: account, plan, value, the run in the Prefect UI, and decision links if any.

    Every data value is cleaned by the untrusted-text policy and escaped for mrkdwn, so no link, mention or
    channel ping can be formed from data; the only links are the run's page and the signed decision links.
    """
    value = f"${plan.plan.estimated_value:,.0f}/yr"
    account = mrkdwn(clean_name(alert.account_id, "company_name", "the account"))
    company = mrkdwn(clean_name(contract.company_name, "company_name")) or account
    current = mrkdwn(clean_name(contract.current_plan, "current_plan", "current plan"))
    recommended = mrkdwn(clean_name(plan.plan.recommended_plan, "recommended_plan", "a larger plan"))
    metric = mrkdwn(clean_name(alert.metric_type, "metric", "usage"))
    text = f"Upsell for {company} ({account}): {current} → {recommended}, est. {value} [{level.value}]"
    blocks: list[dict] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": f"Upsell opportunity: {clean_name(alert.account_id, 'company_name')}",
            },
        },
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Account*\n{company}"},
                {"type": "mrkdwn", "text": f"*Plan*\n{current} → {recommended}"},
                {"type": "mrkdwn", "text": f"*Estimated value*\n{value}"},
                {"type": "mrkdwn", "text": f"*Automation*\n{level.value}"},
                {"type": "mrkdwn", "text": f"*Trigger*\n{metric} ({alert.severity.value})"},
                {"type": "mrkdwn", "text": f"*Email*\n{email.status}"},
            ],
        },
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": mrkdwn(clean_text(plan.plan.justification, "justification"))},
        },
        {
            "type": "context",
            "elements": [
                {"type": "mrkdwn", "text": f"Planner: {mrkdwn(plan.planner)} · <{run_link}|Open run in Prefect>"}
            ],
        },
    ]
    if decision_links:
        blocks.append(decision_buttons(decision_links))
    return SlackPost(text=text, blocks=blocks)


def build_withheld_notice(alert: UsageAlert, run_link: str, problems: list[str]) -> SlackPost:
    """What goes to Slack instead of a summary that failed the safety check: trusted parts only, and why."""
    account = mrkdwn(clean_name(alert.account_id, "company_name", "an account"))
    text = (
        f"Upsell summary for {account} withheld by the safety check ({mrkdwn('; '.join(problems))})."
        f" A human decides before the upsell goes on: <{run_link}|Open run in Prefect>"
    )
    return SlackPost(text=text, blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": text}}])


@task(**step_options("post_slack_summary", FETCH_STEP))
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
    link = run_url(str(flow_run.get_id()))
    settings = get_settings()
    allowed = allowed_links(settings.public_base_url, ui_base_url())
    message = build_summary(alert, level, contract, plan, email, link, decision_links)
    withheld = slack_problems(message.text, message.blocks, allowed)
    if withheld:  # the summary is not sent; a notice built from trusted parts tells the team why
        logger.warning("Slack summary for event %s withheld by the safety check: %s", alert.event_id, withheld)
        message = build_withheld_notice(alert, link, withheld)
        if slack_problems(message.text, message.blocks, allowed):
            return SlackResult(posted=False, error="summary and notice withheld", withheld="; ".join(withheld))
    result, status = post_once(settings, alert.event_id, SLACK_STEP, message, withheld)
    if status == "unknown":
        logger.warning("Slack summary for event %s has an unknown outcome; flagged for a human", alert.event_id)
        return result
    logger.info("Slack summary %s in %s", "posted" if status == "done" else "already posted", result.channel)
    return result


def post_once(
    settings: UpsellSettings, event_id: str, step: str, message: SlackPost, withheld: list[str]
) -> tuple[SlackResult, str]:
    """Post `message` once per (event, step) through the resolved Slack client, as its idempotency record says:
    the result, and the record's status (`done`: posted now; a repeat returns the first post; `unknown`: an
    earlier attempt died during the post, which is never repeated)."""
    notifier = resolve("slack", settings).client
    store = resolve("store", settings).client
    try:
        done = run_once(
            store, event_id, step, lambda: dict(zip(("channel", "ts"), notifier.post(message), strict=True))
        )
    finally:
        store.close()
    provider, reason = type(notifier).__name__, "; ".join(withheld)
    if done.status == "unknown":
        return SlackResult(
            posted=False, provider=provider, error=done.detail, withheld=reason, outcome_unknown=True
        ), done.status
    posted = done.result or {}
    return SlackResult(
        posted=True, channel=posted.get("channel", ""), ts=posted.get("ts"), provider=provider, withheld=reason
    ), done.status
