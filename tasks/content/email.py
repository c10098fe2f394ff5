"""Composing the upsell email (Jinja2 templates) and turning it into an RFC 5322 message."""

from __future__ import annotations

import html
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from flows.models import ContractData, EmailDraft, UpsellPlan, UsageData
from tasks.content.untrusted import clean_name, clean_text

ANSWER_LABELS = {"yes": "Yes, let's talk", "no": "No, thanks", "maybe": "Maybe later"}


@cache
def _templates() -> Environment:
    return Environment(
        loader=PackageLoader("tasks.content", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def compose_email(
    *,
    usage: UsageData,
    contract: ContractData,
    plan: UpsellPlan,
    reply_links: dict[str, str],
    unsubscribe_url: str,
    sender_name: str,
    sender_postal_address: str,
) -> EmailDraft:
    """The personalised upsell email, in text and HTML, with one link per answer.

    Every value from the CRM, the usage source or the planner goes through the untrusted-text policy again
    here, so the message is built from clean parts only (the Subject included); `send_email_draft` checks
    the built message once more before it leaves.
    """
    first_name = clean_name(contract.contact_info.get("name", ""), "contact_name").split(" ")[0]
    current_plan = clean_name(contract.current_plan, "current_plan")
    threshold = usage.additional_context.get("threshold")
    recommended = clean_name(plan.recommended_plan, "recommended_plan", "a larger plan")
    values: dict[str, Any] = {
        "contact_name": first_name or "there",
        "metric_label": clean_name(usage.metric_type.replace("_", " "), "metric", "usage"),
        "period_word": {"daily": "day", "weekly": "week", "monthly": "month"}[usage.usage_period],
        "threshold": threshold if isinstance(threshold, int | float) else None,
        "current_usage": usage.current_usage,
        "plan_phrase": f"your {current_plan} plan" if current_plan else "your current plan",
        "recommended_plan": recommended,
        "features": [f for f in (clean_text(x, "feature") for x in plan.features) if f],
        "justification": clean_text(plan.justification, "justification"),
        "reply_links": reply_links,
        "answer_labels": ANSWER_LABELS,
        "sender_name": sender_name,
        "sender_postal_address": sender_postal_address,
        "unsubscribe_url": unsubscribe_url,
    }
    env = _templates()
    return EmailDraft(
        to=contract.contact_email,
        subject=subject_for(contract.company_name, recommended),
        body_text=env.get_template("upsell_email.txt.j2").render(values),
        body_html=env.get_template("upsell_email.html.j2").render(values),
        reply_links=reply_links,
        unsubscribe_url=unsubscribe_url,
    )


def subject_for(company_name: str, recommended_plan: str) -> str:
    """The Subject, built only from cleaned parts (no control character can reach the header)."""
    company = clean_name(company_name, "company_name")
    plan = clean_name(recommended_plan, "recommended_plan", "a larger plan")
    return f"{company}: room to grow with {plan}" if company else f"Room to grow with {plan}"


def text_to_html(text: str) -> str:
    """HTML for a body a reviewer edited as plain text."""
    paragraphs = [html.escape(p).replace("\n", "<br>") for p in text.split("\n\n")]
    return "<!doctype html><html><body>" + "".join(f"<p>{p}</p>" for p in paragraphs) + "</body></html>"


def build_message(draft: EmailDraft, *, from_address: str, from_name: str = "") -> EmailMessage:
    """An RFC 5322 message with text and HTML parts and one-click unsubscribe headers (RFC 8058)."""
    message = EmailMessage()
    message["From"] = formataddr((from_name, from_address)) if from_name else from_address
    message["To"] = draft.to
    message["Subject"] = draft.subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = make_msgid(domain=from_address.rsplit("@", 1)[-1] or "upsell.local")
    if draft.unsubscribe_url:
        message["List-Unsubscribe"] = f"<{draft.unsubscribe_url}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(draft.body_text)
    message.add_alternative(draft.body_html, subtype="html")
    return message
