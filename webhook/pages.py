"""The small HTML pages behind reply, approval and unsubscribe links (no template engine, everything escaped).

A customer who opens a link from the email must see who is asking and about what, in the words of the email
(its answer labels, the metric as people say it, never the metrics system's raw name); a reviewer who opens an
approval link from Slack must see which upsell the button decides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from fastapi.responses import HTMLResponse

from tasks.content.email import ANSWER_LABELS
from webhook.models import RunSummary
from webhook.security import CSP, page_policy

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}"
    "button{font-size:1rem;padding:.6rem 1.4rem;border:0;border-radius:.3rem;background:#1f6feb;color:#fff;"
    "cursor:pointer}.muted{color:#666;font-size:.9rem}"
)

#: The waits answered by a reviewer, and what their button decides.
_DECISIONS = {
    "approve-email": "sending the upsell email",
    "approve-meeting": "booking the follow-up meeting with the customer",
    "review": "this upsell opportunity",
    "approve-opportunity": "logging this upsell opportunity",
}


@dataclass(frozen=True)
class Sender:
    """Who is asking, as the email signs: the sender's name and the postal address of its footer."""

    name: str
    address: str = ""

    @property
    def signature(self) -> str:
        return f"From {self.name}, {self.address}." if self.address else f"From {self.name}."


@dataclass(frozen=True)
class Confirmation:
    """A confirmation page: its title, its paragraphs (context first, then the question) and its button."""

    title: str
    paragraphs: tuple[str, ...]
    button: str


def page(title: str, message: str | Sequence[str], status_code: int = 200, form: str = "",
         sender: Sender | None = None) -> HTMLResponse:
    """One page: a title, one paragraph per message line, an optional form and the sender's signature."""
    lines = [message] if isinstance(message, str) else list(message)
    paragraphs = "".join(f"<p>{escape(line)}</p>" for line in lines)
    signature = f"<p class=muted>{escape(sender.signature)}</p>" if sender else ""
    body = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=robots content=noindex>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'><title>{escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>{paragraphs}{form}{signature}</body></html>"
    )
    # no caching and no referrer: the token in the URL must not leak to other sites or shared caches
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", CSP: page_policy(body)}
    return HTMLResponse(body, status_code=status_code, headers=headers)


def answer_label(value: dict[str, Any]) -> str:
    """The answer of a reply link in the email's own words ("Maybe later"), never a raw value."""
    return ANSWER_LABELS.get(str(value.get("reply", "")).lower(), "your answer")


def plan_phrase(summary: RunSummary) -> str:
    """The suggestion as the customer read it in the email, in general words when the plan is not known."""
    plan = f"the {summary.recommended_plan} plan" if summary.recommended_plan else "a plan with more room"
    if summary.metric:
        return f"{plan}, as your team's {summary.metric} has grown"
    return f"{plan} for your team"


def describe_reply(value: dict[str, Any], summary: RunSummary, sender: Sender) -> Confirmation:
    """The confirmation page of a reply link from the email: who suggested what, and the answer it sends."""
    label = answer_label(value)
    return Confirmation(
        "Confirm your answer",
        (f"{sender.name} suggested {plan_phrase(summary)}.", f"Your answer: {label}."),
        f"Send \u201c{label}\u201d",
    )


def upsell_context(summary: RunSummary) -> str:
    """Which upsell a reviewer decides on: account, company, plan and the alert's metric, as far as known."""
    account = summary.account_id or "this account"
    if summary.company_name and summary.company_name != summary.account_id:
        account = f"{account} ({summary.company_name})"
    if not summary.recommended_plan:
        return f"Upsell for {account}." if summary.account_id else (
            "The details of this upsell could not be read just now; the flow run in Prefect shows them.")
    move = f"from {summary.current_plan} " if summary.current_plan else ""
    cause = f" after a {summary.metric} alert" if summary.metric else ""
    return f"Upsell for {account}: {move}to {summary.recommended_plan}{cause}."


def describe_decision(wait: str, value: dict[str, Any], summary: RunSummary) -> Confirmation:
    """The confirmation page of a reviewer's approve or reject link (from Slack)."""
    verb = "Approve" if value.get("approved") else "Reject"
    amount = value.get("estimated_value", summary.estimated_value)  # an email approval carries no value
    worth = f" (estimated value ${amount:,.0f}/yr)" if _finite_number(amount) else ""
    decision = _DECISIONS.get(wait, "this upsell")
    return Confirmation(f"{verb} the upsell", (upsell_context(summary), f"{verb} {decision}{worth}?"), verb)


def describe_unsubscribe(value: dict[str, Any], sender: Sender) -> Confirmation:
    """The confirmation page of the unsubscribe link (in the email's footer and its List-Unsubscribe header)."""
    email = str(value.get("email", ""))
    return Confirmation(
        "Unsubscribe", (f"Stop emails from {sender.name} about plan upgrades to {email}?",), "Unsubscribe"
    )


def _finite_number(value: Any) -> bool:
    """A number that formats as one: not a bool, NaN or infinity, nor an int too large for a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # math.isfinite converts an int to a float first
        return False


def confirm_form(label: str, hidden: dict[str, str] | None = None) -> str:
    """The button that does what the page describes (a POST to the same link: a GET never changes anything)."""
    fields = "".join(
        f"<input type=hidden name='{escape(k)}' value='{escape(v)}'>" for k, v in (hidden or {}).items()
    )
    return (
        f"<form method=post>{fields}<button type=submit>{escape(label)}</button></form>"
        "<p class=muted>Nothing happens until you press the button.</p>"
    )


def confirmation_page(confirmation: Confirmation, form: str, sender: Sender | None = None) -> HTMLResponse:
    """The page of a link before it is used: its context, its question and its button."""
    return page(confirmation.title, confirmation.paragraphs, form=form, sender=sender)
