"""Step 4: compose the personalised upsell email and send it exactly once; later, at most one follow-up."""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from blocks.interfaces import EmailSender
from blocks.registry import resolve
from blocks.ses import SesEmailClient
from flows.models import ContractData, EmailDraft, EmailResult, UpsellPlan, UsageAlert, UsageData
from tasks.content.email import (
    DEFAULT_TEMPLATE,
    EmailKind,
    build_message,
    compose_email,
    compose_follow_up,
    message_id_for,
)
from tasks.content.outgoing import allowed_links, email_problems
from tasks.runtime.links import LinkToken, keyed_id, link_for, reply_address
from tasks.runtime.once import run_once
from tasks.runtime.policy import SEND_STEP, step_options
from tasks.runtime.settings import get_settings

EMAIL_STEP = "send_email_draft"
FOLLOW_UP_STEP = "send_follow_up"


def draft_email(
    alert: UsageAlert,
    usage: UsageData,
    contract: ContractData,
    plan: UpsellPlan,
    *,
    template: str = DEFAULT_TEMPLATE,
    subject: str | None = None,
) -> EmailDraft:
    """Compose the email with signed yes/no/maybe links and a one-click unsubscribe link.

    A plain function, not a task: it calls nothing outside this process. The flow records the draft with
    the step results at its next wait, so a resumed run uses the draft that was sent. `template` and
    `subject` come from the playbook or its A/B variant.
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
    draft = compose_email(
        usage=usage,
        contract=contract,
        plan=plan,
        reply_links=links,
        unsubscribe_url=unsubscribe,
        sender_name=settings.sender_name,
        sender_postal_address=settings.sender_postal_address,
        template=template,
        subject=subject,
    )
    if not settings.reply_domain or not run_id:
        return draft
    address = reply_address(run_id, contract.contact_email, secret, settings.reply_domain)
    return draft.model_copy(update={"reply_to": address})


def draft_follow_up(alert: UsageAlert, contract: ContractData, first: EmailDraft) -> EmailDraft:
    """The follow-up to the first email: "Re:" its subject, its answer and unsubscribe links (a plain function)."""
    follow_up = compose_follow_up(first=first, contract=contract, metric_type=alert.metric_type)
    return follow_up.model_copy(update={"reply_to": first.reply_to})  # a reply to either resumes the same run


@task(**step_options(EMAIL_STEP, SEND_STEP))
def send_email_draft(alert: UsageAlert, draft: EmailDraft) -> EmailResult:
    """Check the email, then send it once per event: a retry, a resume or a re-run never sends it again.

    The final check runs on the message as it will leave (after any reviewer edit): a message with a link
    that is not the product's own, more than one recipient or a dirty header is not sent (status `blocked`),
    and the flow hands the upsell to a human with the problems found.
    """
    return _send_once(alert, draft, EMAIL_STEP, "offer")


@task(**step_options(FOLLOW_UP_STEP, SEND_STEP))
def send_follow_up(alert: UsageAlert, draft: EmailDraft, first_provider_id: str | None) -> EmailResult:
    """Send the follow-up once per event, in the first email's thread, under the same checks as the first.

    `first_provider_id` is the first email's `EmailResult.message_id`: with SES the recipient's copy carries
    an id derived from it (SES replaces our Message-ID), so the follow-up names that id as well as ours.
    """
    return _send_once(alert, draft, FOLLOW_UP_STEP, "follow-up", first_provider_id)


def _thread(
    alert: UsageAlert, sender: EmailSender, first_provider_id: str | None, secret: str
) -> tuple[str, list[str]]:
    """In-Reply-To and References of a reply to the event's first email: the id the customer's copy carries
    (SES's, when SES sent it) and every id that email is known by."""
    ours = message_id_for(alert.event_id, "offer", sender.from_address, secret)
    seen = ours
    if first_provider_id and isinstance(sender, SesEmailClient):
        seen = sender.header_message_id(first_provider_id)
    return seen, [ours, seen]


def idempotency_key(event_id: str, kind: EmailKind, secret: str) -> str:
    """The key an email is sent once under (the SES header, the outbox file): keyed, so it shows no event id."""
    return f"upsell-{keyed_id(secret, 'idempotency', f'{kind}:{event_id}')}"


def _send_once(
    alert: UsageAlert, draft: EmailDraft, step: str, kind: EmailKind, first_provider_id: str | None = None
) -> EmailResult:
    """The final check, the suppression check, then one send of the event's email of `kind` (`run_once`)."""
    what = "Email" if kind == "offer" else "Follow-up"
    logger = get_run_logger()
    settings = get_settings()
    problems = email_problems(draft, allowed_links(settings.public_base_url))
    if problems:
        logger.warning("%s for event %s withheld by the safety check: %s", what, alert.event_id, "; ".join(problems))
        return EmailResult(status="blocked", detail="; ".join(problems))
    store = resolve("store", settings).client
    try:
        if store.is_suppressed(draft.to):
            logger.info("Contact unsubscribed; no %s for event %s", what.lower(), alert.event_id)
            return EmailResult(status="suppressed", detail="contact unsubscribed")
        sender = resolve("email", settings).client
        provider = type(sender).__name__
        secret = settings.link_secret.get_secret_value()
        in_reply_to, references = (
            _thread(alert, sender, first_provider_id, secret) if kind == "follow-up" else (None, [])
        )
        message = build_message(
            draft,
            from_address=sender.from_address,
            from_name=sender.from_name,
            message_id=message_id_for(alert.event_id, kind, sender.from_address, secret),
            in_reply_to=in_reply_to,
            references=references,
        )
        key = idempotency_key(alert.event_id, kind, secret)
        done = run_once(store, alert.event_id, step, lambda: {"message_id": sender.send(message, idempotency_key=key)})
    finally:
        store.close()
    if done.status == "unknown":
        logger.warning("%s for event %s has an unknown outcome; flagged for a human, not resent", what, alert.event_id)
        return EmailResult(status="unknown", provider=provider, detail=done.detail)
    message_id = (done.result or {}).get("message_id")
    if done.status == "already":
        logger.info("%s for event %s was already sent (%s); not sending again", what, alert.event_id, message_id)
        return EmailResult(status="already_sent", message_id=message_id, provider=provider)
    logger.info("%s for event %s sent via %s (message id %s)", what, alert.event_id, provider, message_id)
    return EmailResult(status="sent", message_id=message_id, provider=provider)
