"""Composing the upsell email (Jinja2 templates) and turning it into an RFC 5322 message."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from functools import cache
from string import Formatter
from typing import Any, Literal

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from flows.models import ContractData, EmailDraft, UpsellPlan, UsageData, metric_label
from tasks.content.untrusted import clean_name, clean_text, normalise
from tasks.runtime.links import keyed_id

ANSWER_LABELS = {"yes": "Yes, let's talk", "no": "No, thanks", "maybe": "Maybe later"}
#: The bundled message templates a playbook or a variant may name, each `<file>.txt.j2` and `<file>.html.j2`.
#: Only these: the frame (`upsell_email.*`) and the follow-up's message are not a choice of the playbook.
MESSAGE_TEMPLATES = {"upsell_email": "upsell_message", "upsell_short": "upsell_message_short"}
DEFAULT_TEMPLATE = "upsell_email"
#: The placeholders a configured subject line may use.
SUBJECT_FIELDS = frozenset({"company", "plan"})
EmailKind = Literal["offer", "follow-up"]


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
    template: str = DEFAULT_TEMPLATE,
    subject: str | None = None,
) -> EmailDraft:
    """The personalised upsell email, in text and HTML, with one link per answer.

    Every value from the CRM, the usage source or the planner goes through the untrusted-text policy again
    here, so the message is built from clean parts only (the Subject included); `send_email_draft` checks
    the built message once more before it leaves. The metric is named in words (`metric_label`), also where
    the planner's text quotes its raw name. `template` names the message (one of `available_templates()`),
    `subject` a configured subject line (an A/B variant's; see `subject_for`).

    The message speaks to the contact ("your team's trade volume"), from the figures: the change on the
    previous period in words (`UsageData.change_in_words`, nothing when there is no previous figure), the
    amount included in their plan and what it costs them ("$30,000 a year"), the recommended plan and its
    features. The planner's justification, ROI and risk are notes for the sales team (Slack, the run's
    artifacts) and never reach the customer.
    """
    if template not in MESSAGE_TEMPLATES:
        raise ValueError(f"unknown email template {template!r}; bundled: {', '.join(sorted(MESSAGE_TEMPLATES))}")
    stem = MESSAGE_TEMPLATES[template]
    first_name = clean_name(contract.contact_info.get("name", ""), "contact_name").split(" ")[0]
    current_plan = clean_name(contract.current_plan, "current_plan")
    threshold = usage.additional_context.get("threshold")
    recommended = clean_name(plan.recommended_plan, "recommended_plan", "a larger plan")
    in_words = _metric_in_words(usage.metric_type)
    included = threshold if isinstance(threshold, int | float) and not isinstance(threshold, bool) else None
    values: dict[str, Any] = {
        "contact_name": first_name or "there",
        "metric_label": clean_name(metric_label(usage.metric_type), "metric", "usage"),
        "period_word": {"daily": "day", "weekly": "week", "monthly": "month"}[usage.usage_period],
        "current": figure(usage.current_usage),
        "change": usage.change_in_words(),
        "included": figure(included) if included is not None and included > 0 else None,
        "plan_phrase": f"your {current_plan} plan" if current_plan else "your current plan",
        "spend": yearly_amount(contract.current_spend, contract.contract_terms.get("currency")),
        "recommended_plan": recommended,
        "features": [f for f in (in_words(clean_text(x, "feature")) for x in plan.features) if f],
    }
    env = _templates()
    message = env.get_template(f"{stem}.txt.j2").render(values)
    draft = EmailDraft(
        to=contract.contact_email,
        subject=subject_for(contract.company_name, recommended, subject),
        body_text="",
        body_html="",
        reply_links=reply_links,
        unsubscribe_url=unsubscribe_url,
        message=message,
        sender_name=sender_name,
        sender_postal_address=sender_postal_address,
    )
    return _framed(draft, message, Markup(env.get_template(f"{stem}.html.j2").render(values)))


def available_templates() -> set[str]:
    """The message template names a playbook or a variant may give (`template:`)."""
    return set(MESSAGE_TEMPLATES)


def compose_follow_up(*, first: EmailDraft, contract: ContractData, metric_type: str) -> EmailDraft:
    """A short follow-up in the first email's thread: "Re:" its subject, the same answer and unsubscribe links."""
    values = {
        "contact_name": clean_name(contract.contact_info.get("name", ""), "contact_name").split(" ")[0] or "there",
        "metric_label": clean_name(metric_label(metric_type), "metric", "usage"),
    }
    env = _templates()
    subject = first.subject if first.subject.startswith("Re: ") else f"Re: {first.subject}"
    draft = first.model_copy(update={"subject": subject})
    message = env.get_template("follow_up_message.txt.j2").render(values)
    return _framed(draft, message, Markup(env.get_template("follow_up_message.html.j2").render(values)))


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


#: How an amount in these currencies is written: the symbol before the number; any other ISO 4217 code follows it.
CURRENCY_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£"}


def figure(value: float) -> str:
    """A number as a reader writes it: thousands separated, no decimals for whole or large numbers
    (35271.0 -> "35,271", 2.5 -> "2.5")."""
    if value == round(value) or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def yearly_amount(value: float, currency: object) -> str | None:
    """An annual amount for the reader: "$120,000 a year", "€30,000 a year", "30,000 CHF a year"; None for
    no amount (0) or no usable currency code (an amount in an unknown currency is left unsaid)."""
    code = str(currency or "").strip().upper()
    if value <= 0 or not re.fullmatch(r"[A-Z]{3}", code):
        return None
    symbol = CURRENCY_SYMBOLS.get(code)
    return f"{symbol}{figure(value)} a year" if symbol else f"{figure(value)} {code} a year"


def _metric_in_words(metric_type: str) -> Callable[[str], str]:
    """Replaces the metric's raw name (`trade_volume`) in a text with its label (`trade volume`)."""
    raw = re.compile(rf"(?<![\w]){re.escape(metric_type)}(?![\w])", re.I) if metric_type.strip() else None
    label = metric_label(metric_type)
    return lambda text: raw.sub(label, text) if raw is not None else text


def subject_for(company_name: str, recommended_plan: str, line: str | None = None) -> str:
    """The Subject, built only from cleaned parts (no control character can reach the header).

    `line` is a configured subject (trusted text, still normalised for the header) whose `{company}` and
    `{plan}` are filled with the cleaned values; any other placeholder is a ValueError (`check_subject`).
    """
    company = clean_name(company_name, "company_name")
    plan = clean_name(recommended_plan, "recommended_plan", "a larger plan")
    if line is not None:
        return normalise(check_subject(line).format_map({"company": company or "your team", "plan": plan}))
    return f"{company}: room to grow with {plan}" if company else f"Room to grow with {plan}"


def check_subject(line: str) -> str:
    """`line` if its only placeholders are `{company}` and `{plan}` (no attribute, index, conversion or format
    spec), else ValueError; usable as a pydantic validator of a configured subject."""
    try:
        fields = [(name, spec, conversion) for _text, name, spec, conversion in Formatter().parse(line)]
    except ValueError as exc:  # a lone "{" or "}"
        raise ValueError(f"the subject is not a valid template: {exc} (write a brace as {{{{ or }}}})") from None
    for name, spec, conversion in fields:
        if name is not None and (name not in SUBJECT_FIELDS or spec or conversion):
            raise ValueError("the subject may hold only the placeholders {company} and {plan}")
    return line


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


def message_id_for(event_id: str, kind: EmailKind, from_address: str, secret: str) -> str:
    """The Message-ID of the event's email of `kind`: the same for every attempt, so a retry builds the same
    message and the follow-up can name the first email; a keyed digest, so it shows no event id and predicts no
    other email's id."""
    return f"<{keyed_id(secret, 'message-id', f'{kind}:{event_id}')}@{_domain(from_address)}>"


def _domain(from_address: str) -> str:
    return from_address.rsplit("@", 1)[-1] or "upsell.local"


def build_message(
    draft: EmailDraft,
    *,
    from_address: str,
    from_name: str = "",
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
) -> EmailMessage:
    """An RFC 5322 message with text and HTML parts and one-click unsubscribe headers (RFC 8058).

    `message_id` is a random one when not given; `in_reply_to` (the id the first email reached the customer
    with) and `references` (every id that email is known by) put this message in its thread.
    """
    message = EmailMessage()
    message["From"] = formataddr((from_name, from_address)) if from_name else from_address
    message["To"] = draft.to
    message["Subject"] = draft.subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = message_id or make_msgid(domain=_domain(from_address))
    if draft.reply_to:
        message["Reply-To"] = draft.reply_to
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
        message["References"] = " ".join(dict.fromkeys([*references, in_reply_to]))
    if draft.unsubscribe_url:
        message["List-Unsubscribe"] = f"<{draft.unsubscribe_url}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(draft.body_text)
    message.add_alternative(draft.body_html, subtype="html")
    return message
