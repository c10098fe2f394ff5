"""Composing the upsell email (Jinja2 templates) and turning it into an RFC 5322 message."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from flows.models import ContractData, EmailDraft, UpsellPlan, UsageData, metric_label
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


#: The answer links as buttons (inline style: mail clients drop style sheets).
BUTTON_STYLE = (
    "display: inline-block; margin: 0 0.5em 0.5em 0; padding: 0.5em 1.2em; border-radius: 4px;"
    " background: #1f6feb; color: #ffffff; text-decoration: none; font-weight: bold"
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
    the built message once more before it leaves. The metric is named in words (`metric_label`), also where
    the planner's text quotes its raw name.
    """
    first_name = clean_name(contract.contact_info.get("name", ""), "contact_name").split(" ")[0]
    current_plan = clean_name(contract.current_plan, "current_plan")
    threshold = usage.additional_context.get("threshold")
    recommended = clean_name(plan.recommended_plan, "recommended_plan", "a larger plan")
    in_words = _metric_in_words(usage.metric_type)
    values: dict[str, Any] = {
        "contact_name": first_name or "there",
        "metric_label": clean_name(metric_label(usage.metric_type), "metric", "usage"),
        "period_word": {"daily": "day", "weekly": "week", "monthly": "month"}[usage.usage_period],
        "threshold": threshold if isinstance(threshold, int | float) else None,
        "current_usage": usage.current_usage,
        "plan_phrase": f"your {current_plan} plan" if current_plan else "your current plan",
        "recommended_plan": recommended,
        "features": [f for f in (in_words(clean_text(x, "feature")) for x in plan.features) if f],
        "justification": in_words(clean_text(plan.justification, "justification")),
    }
    env = _templates()
    message = env.get_template("upsell_message.txt.j2").render(values)
    draft = EmailDraft(
        to=contract.contact_email,
        subject=subject_for(contract.company_name, recommended),
        body_text="",
        body_html="",
        reply_links=reply_links,
        unsubscribe_url=unsubscribe_url,
        message=message,
        sender_name=sender_name,
        sender_postal_address=sender_postal_address,
    )
    return _framed(draft, message, Markup(env.get_template("upsell_message.html.j2").render(values)))


def with_message(draft: EmailDraft, message: str) -> EmailDraft:
    """The draft with a reviewer's message: both body parts rebuilt around it, with the same answer links,
    signature and unsubscribe footer as drafted (the reviewer never edits those)."""
    return _framed(draft, message, Markup(text_to_html(message)))


def _framed(draft: EmailDraft, message: str, message_html: Markup) -> EmailDraft:
    """`draft` with its body parts: `message` between the greeting's links, the signature and the footer."""
    frame: dict[str, Any] = {
        "reply_links": draft.reply_links,
        "answer_labels": ANSWER_LABELS,
        "button_style": BUTTON_STYLE,
        "sender_name": draft.sender_name,
        "sender_postal_address": draft.sender_postal_address,
        "unsubscribe_url": draft.unsubscribe_url,
    }
    env = _templates()
    return draft.model_copy(
        update={
            "message": message,
            "body_text": env.get_template("upsell_email.txt.j2").render(frame, message=message),
            "body_html": env.get_template("upsell_email.html.j2").render(frame, message_html=message_html),
        }
    )


def _metric_in_words(metric_type: str) -> Callable[[str], str]:
    """Replaces the metric's raw name (`trade_volume`) in a text with its label (`trade volume`)."""
    raw = re.compile(rf"(?<![\w]){re.escape(metric_type)}(?![\w])", re.I) if metric_type.strip() else None
    label = metric_label(metric_type)
    return lambda text: raw.sub(label, text) if raw is not None else text


def subject_for(company_name: str, recommended_plan: str) -> str:
    """The Subject, built only from cleaned parts (no control character can reach the header)."""
    company = clean_name(company_name, "company_name")
    plan = clean_name(recommended_plan, "recommended_plan", "a larger plan")
    return f"{company}: room to grow with {plan}" if company else f"Room to grow with {plan}"


_LIST_ITEM = re.compile(r"^\s*[-*\u2022]\s+")


def text_to_html(text: str) -> str:
    """HTML for a message a reviewer edited as plain text: paragraphs at blank lines, line breaks kept, lines
    starting with "- " as a bulleted list; every character escaped (the text is data, never markup)."""
    blocks: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        lines = paragraph.splitlines()
        if lines and all(_LIST_ITEM.match(line) for line in lines):
            items = "".join(f"<li>{html.escape(_LIST_ITEM.sub('', line))}</li>" for line in lines)
            blocks.append(f"<ul>{items}</ul>")
        elif paragraph.strip():
            blocks.append("<p>" + "<br>".join(html.escape(line) for line in lines) + "</p>")
    return "\n".join(blocks)


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
