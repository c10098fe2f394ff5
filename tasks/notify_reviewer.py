"""Tell the sales team that an upsell waits for a person's decision: a Slack message (or its local stand-in
record) with the run's page in the Prefect UI and approve/reject links, posted once per wait.

Without it nobody learns that a run is waiting: at HUMAN_INTERVENTION the email approval comes before the
email and before the Slack summary, and the later approvals come long after the summary was read.
"""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from blocks.interfaces import SlackPost
from flows.models import CustomerReply, SlackResult, UpsellPlan, UsageAlert
from tasks.content.outgoing import allowed_links, decision_buttons, mrkdwn, slack_problems
from tasks.content.untrusted import clean_name
from tasks.post_slack_summary import post_once, run_url, ui_base_url
from tasks.runtime.policy import FETCH_STEP, step_options
from tasks.runtime.progress import when
from tasks.runtime.settings import get_settings

#: What each decision asks of the reviewer, in the words of the message.
DECISIONS: dict[str, str] = {
    "approve-email": "approve the upsell email before it is sent",
    "review": "review the upsell now that the customer has replied",
    "approve-meeting": "approve booking the meeting the customer asked for",
    "approve-opportunity": "approve the opportunity before it is logged",
    "read-reply": "read the customer's emailed reply, which could not be told apart as yes, no or maybe",
}
REPLIES = {"yes": "Yes", "no": "No", "maybe": "Maybe later", "no_reply": "No reply"}


def notice_step(wait: str) -> str:
    """The idempotency key of the notice of one wait: one message per wait of an event, whatever replays it."""
    return f"notify_reviewer:{wait}"


def build_notice(
    alert: UsageAlert,
    company_name: str,
    wait: str,
    plan: UpsellPlan,
    reply: CustomerReply | None,
    due: datetime,
    run_link: str,
    decision_links: dict[str, str],
) -> SlackPost:
    """Block Kit message: what is to be decided, about which account and plan, by when, and where to answer.

    Data values are cleaned by the untrusted-text policy and escaped for mrkdwn (as in the summary); the only
    links are the run's page and the signed decision links.
    """
    account = mrkdwn(clean_name(alert.account_id, "company_name", "an account"))
    company = mrkdwn(clean_name(company_name, "company_name"))
    account = f"{company} ({account})" if company else account
    recommended = mrkdwn(clean_name(plan.recommended_plan, "recommended_plan", "a larger plan"))
    decision = DECISIONS[wait]
    text = f"Decision needed for {account}: {decision} (answer due by {when(due)}). <{run_link}|Open the run>"
    fields = [
        {"type": "mrkdwn", "text": f"*Account*\n{account}"},
        {"type": "mrkdwn", "text": f"*Recommended plan*\n{recommended}"},
        {"type": "mrkdwn", "text": f"*Estimated value*\n${plan.estimated_value:,.0f}/yr"},
        {"type": "mrkdwn", "text": f"*Answer due by*\n{when(due)}"},
    ]
    if reply is not None:
        fields.append({"type": "mrkdwn", "text": f"*Customer replied*\n{REPLIES[reply.value]}"})
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Decision needed"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"Please {decision}."}},
        {"type": "section", "fields": fields},
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"<{run_link}|Open the run in Prefect> to see it all and answer"}],
        },
    ]
    if decision_links:
        blocks.append(decision_buttons(decision_links))
    return SlackPost(text=text, blocks=blocks)


def build_plain_notice(wait: str, due: datetime, run_link: str) -> SlackPost:
    """The notice from trusted parts only, for when the account's data fails the safety check."""
    text = (
        f"Decision needed: {DECISIONS[wait]} (answer due by {when(due)})."
        f" Some of the account's data was held back by the safety check: <{run_link}|Open the run in Prefect>"
    )
    return SlackPost(text=text, blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": text}}])


@task(**step_options("notify_reviewer", FETCH_STEP))
def notify_reviewer(
    alert: UsageAlert,
    company_name: str,
    wait: str,
    plan: UpsellPlan,
    reply: CustomerReply | None,
    due: datetime,
    decision_links: dict[str, str],
) -> SlackResult:
    """Tell the sales team in Slack that the upsell waits for their decision, once per wait."""
    logger = get_run_logger()
    settings = get_settings()
    link = run_url(str(flow_run.get_id()))
    allowed = allowed_links(settings.public_base_url, ui_base_url())
    message = build_notice(alert, company_name, wait, plan, reply, due, link, decision_links)
    withheld = slack_problems(message.text, message.blocks, allowed)
    if withheld:  # the account's data is not shown; the team still learns that a decision waits
        logger.warning("Reviewer notice for event %s shortened by the safety check: %s", alert.event_id, withheld)
        message = build_plain_notice(wait, due, link)
    result, status = post_once(settings, alert.event_id, notice_step(wait), message, withheld)
    if status == "unknown":
        logger.warning("Whether the sales team was told about the %s decision is unknown: %s", wait, result.error)
    elif status == "done":
        logger.info("Sales team told in %s that a decision waits: %s", result.channel, DECISIONS[wait])
    return result
