"""Composing the upsell email (Jinja2 templates) and turning it into an RFC 5322 message."""

from __future__ import annotations

import html
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from functools import cache

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from flows.models import ContractData, EmailDraft, UpsellPlan, UsageData

ANSWER_LABELS = {"yes": "Yes, let's talk", "no": "No, thanks", "maybe": "Maybe later"}


@cache
def _templates() -> Environment:
    return Environment(
        loader=PackageLoader("tasks", "templates"),
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
    """The personalised upsell email, in text and HTML, with one link per answer."""
    values = {
        "contact_name": contract.contact_info.get("name", "there").split(" ")[0] or "there",
        "metric_label": usage.metric_type.replace("_", " "),
        "period_word": {"daily": "day", "weekly": "week", "monthly": "month"}[usage.usage_period],
        "threshold": usage.additional_context.get("threshold"),
        "usage": usage,
        "contract": contract,
        "plan": plan,
        "reply_links": reply_links,
        "answer_labels": ANSWER_LABELS,
        "sender_name": sender_name,
        "sender_postal_address": sender_postal_address,
        "unsubscribe_url": unsubscribe_url,
    }
    env = _templates()
    return EmailDraft(
        to=contract.contact_email,
        subject=f"{contract.company_name or contract.account_id}: room to grow with {plan.recommended_plan}",
        body_text=env.get_template("upsell_email.txt.j2").render(values),
        body_html=env.get_template("upsell_email.html.j2").render(values),
        reply_links=reply_links,
        unsubscribe_url=unsubscribe_url,
    )


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
