"""The small HTML pages behind reply, approval and unsubscribe links (no template engine, everything escaped)."""

from __future__ import annotations

import math
from html import escape
from typing import Any

from fastapi.responses import HTMLResponse

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}"
    "button{font-size:1rem;padding:.6rem 1.4rem;border:0;border-radius:.3rem;background:#1f6feb;color:#fff;"
    "cursor:pointer}.muted{color:#666;font-size:.9rem}"
)


def page(title: str, message: str, status_code: int = 200, form: str = "") -> HTMLResponse:
    body = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=robots content=noindex>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'><title>{escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1><p>{escape(message)}</p>{form}</body></html>"
    )
    # no caching and no referrer: the token in the URL must not leak to other sites or shared caches
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    return HTMLResponse(body, status_code=status_code, headers=headers)


def describe(wait: str, value: dict[str, Any]) -> tuple[str, str, str]:
    """(title, question, button label) of the confirmation page of a link."""
    if wait == "reply":
        answer = str(value.get("reply", "")).lower()
        labels = {"yes": "Yes, I'm interested", "no": "No, thank you", "maybe": "Maybe, tell me more"}
        label = labels.get(answer, answer)
        return "Confirm your answer", f"Your answer to our offer: {label}.", f"Send \u201c{label}\u201d"
    if wait == "unsubscribe":
        email = str(value.get("email", ""))
        return "Unsubscribe", f"Stop upsell emails to {email}?", "Unsubscribe"
    approved = bool(value.get("approved"))
    verb = "Approve" if approved else "Reject"
    amount = value.get("estimated_value")
    worth = f" (estimated value ${amount:,.0f}/yr)" if _finite_number(amount) else ""
    return f"{verb} the upsell", f"{verb} this upsell opportunity{worth}?", verb


def _finite_number(value: Any) -> bool:
    """A number that formats as one: not a bool, NaN or infinity, nor an int too large for a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # math.isfinite converts an int to a float first
        return False


def confirm_form(label: str, hidden: dict[str, str] | None = None) -> str:
    fields = "".join(
        f"<input type=hidden name='{escape(k)}' value='{escape(v)}'>" for k, v in (hidden or {}).items()
    )
    return (
        f"<form method=post>{fields}<button type=submit>{escape(label)}</button></form>"
        "<p class=muted>Nothing happens until you press the button.</p>"
    )
