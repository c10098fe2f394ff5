"""Step 4: compose the personalised upsell email and send it exactly once."""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from blocks.registry import resolve
from flows.models import ContractData, EmailDraft, EmailResult, UpsellPlan, UsageAlert, UsageData
from tasks.content.email import build_message, compose_email
from tasks.content.outgoing import allowed_links, email_problems
from tasks.runtime.links import LinkToken, link_for
from tasks.runtime.once import run_once
from tasks.runtime.policy import SEND_STEP, step_options
from tasks.runtime.settings import get_settings

EMAIL_STEP = "send_email_draft"


def draft_email(alert: UsageAlert, usage: UsageData, contract: ContractData, plan: UpsellPlan) -> EmailDraft:
    """Compose the email with signed yes/no/maybe links and a one-click unsubscribe link.

    A plain function, not a task: it calls nothing outside this process. The flow records the draft with
    the step results at its next wait, so a resumed run uses the draft that was sent.
    """
    settings = get_settings()
    secret = settings.link_secret.get_secret_value()
    run_id = str(flow_run.get_id() or "")
    expires = int(time.time() + settings.link_ttl_s)
    links = {
        answer: link_for(
            settings.public_base_url,
            secret,
            LinkToken(
                flow_run_id=run_id, wait="reply", value={"reply": answer}, expires_at=expires, nonce=alert.event_id
            ),
        )
        for answer in ("yes", "no", "maybe")
    }
    unsubscribe = link_for(
        settings.public_base_url,
        secret,
        LinkToken(
            flow_run_id=run_id,
            wait="unsubscribe",
            value={"email": contract.contact_email},
            expires_at=int(time.time() + 365 * 86400),
            nonce=alert.event_id,
        ),
        route="unsubscribe",
    )
    return compose_email(
        usage=usage,
        contract=contract,
        plan=plan,
        reply_links=links,
        unsubscribe_url=unsubscribe,
        sender_name=settings.sender_name,
        sender_postal_address=settings.sender_postal_address,
    )


@task(**step_options("send_email_draft", SEND_STEP))
def send_email_draft(alert: UsageAlert, draft: EmailDraft) -> EmailResult:
    """Check the email, then send it once per event: a retry, a resume or a re-run never sends it again.

    The final check runs on the message as it will leave (after any reviewer edit): a message with a link
    that is not the product's own, more than one recipient or a dirty header is not sent (status `blocked`),
    and the flow hands the upsell to a human with the problems found.
    """
    logger = get_run_logger()
    settings = get_settings()
    problems = email_problems(draft, allowed_links(settings.public_base_url))
    if problems:
        logger.warning("Email for event %s withheld by the safety check: %s", alert.event_id, "; ".join(problems))
        return EmailResult(status="blocked", detail="; ".join(problems))
    store = resolve("store", settings).client
    try:
        if store.is_suppressed(draft.to):
            logger.info("Contact unsubscribed; no email for event %s", alert.event_id)
            return EmailResult(status="suppressed", detail="contact unsubscribed")
        sender = resolve("email", settings).client
        provider = type(sender).__name__
        message = build_message(draft, from_address=sender.from_address, from_name=sender.from_name)
        done = run_once(
            store,
            alert.event_id,
            EMAIL_STEP,
            lambda: {"message_id": sender.send(message, idempotency_key=f"{alert.event_id}-email")},
        )
    finally:
        store.close()
    if done.status == "unknown":
        logger.warning("Email for event %s has an unknown outcome; flagged for a human, not resent", alert.event_id)
        return EmailResult(status="unknown", provider=provider, detail=done.detail)
    message_id = (done.result or {}).get("message_id")
    if done.status == "already":
        logger.info("Email for event %s was already sent (%s); not sending again", alert.event_id, message_id)
        return EmailResult(status="already_sent", message_id=message_id, provider=provider)
    logger.info("Email for event %s sent via %s (message id %s)", alert.event_id, provider, message_id)
    return EmailResult(status="sent", message_id=message_id, provider=provider)
