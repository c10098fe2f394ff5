"""The one policy for untrusted text: what the CRM, the usage API and the model say is data, never a lever.

Applied where data enters (the fetch and plan steps) and again where it leaves (the email and Slack builders):

- Unicode is normalised (NFKC); control, zero-width, bidi-override and other invisible characters are removed;
  whitespace runs become one space; every field has a length cap.
- Links, web addresses, bare domains, IP addresses, email addresses, URI schemes, markup (HTML tags, angle
  brackets, markdown links), chat control sequences (`<!channel>`, `<@U…>`, `@here`) and template syntax are
  removed from long text; a short field (a name, a plan) that holds any of them is replaced by a neutral value.
- Identity fields come from trusted places only: the account and the metric from the alert, the recipient from
  one address that a real parser accepts. Numbers must be finite, non-negative where they are amounts, and under
  a cap. Data that breaks these rules raises `UnsafeData`, naming the field and the rule, never quoting the value.
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import date
from typing import Any

from email_validator import EmailNotValidError, validate_email

from blocks.interfaces import PermanentError

#: Length caps, per field, in characters (after normalisation).
CAPS: dict[str, int] = {
    "company_name": 80,
    "contact_name": 60,
    "contact_title": 80,
    "current_plan": 40,
    "metric": 60,
    "date": 40,
    "recommended_plan": 60,
    "justification": 1200,
    "roi_analysis": 600,
    "risk_assessment": 600,
    "feature": 120,
    "reason": 500,
    "data_key": 60,
    "data_value": 200,
}
MAX_FEATURES = 8
MAX_DATA_ITEMS = 30
MAX_DATA_DEPTH = 3

_REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
#: Letters and marks that render as nothing (Hangul fillers, Braille blank, Khmer inherent vowels, ...).
_INVISIBLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180e\u2800\u3164\uffa0")
_DOT = r"[.\u3002]"  # NFKC maps the other full stops to these; some clients treat the ideographic one as a dot
_LABEL = r"[^\W_](?:[\w-]{0,61}[^\W_])?"
_SCHEMES = (
    "javascript|vbscript|livescript|data|file|mailto|tel|sms|callto|blob|intent|slack|zoommtg|zoomus|skype|"
    "ms-[a-z-]+|view-source|jar|ldap|ssh|s?ftp|git|irc|magnet|webcal|facetime|itms|market"
)

#: (rule, pattern): what untrusted text must not carry into a message. Order matters for removal.
PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("a chat control sequence", re.compile(r"<\s*[!@#][^<>]*>?|(?<![\w@])@(?:channel|here|everyone)\b", re.I)),
    (
        "markup",
        re.compile(
            r"<[^<>]*>|!?\[[^\]]*\]\([^)]*\)"  # tags, markdown links and images
            r"|=\?[\w-]+\?[bq]\?\S*?\?="  # MIME encoded-words, which a mail client would decode
            r"|\{\{|\}\}|\{%|%\}|\{#|#\}|\$\{|#\{|[<>]",  # template syntax, stray angle brackets
            re.I,
        ),
    ),
    ("a link", re.compile(r"(?<![a-z0-9+.-])[a-z][a-z0-9+.-]{0,30}:/{2}\S*", re.I)),
    ("a URI scheme", re.compile(rf"(?<![a-z0-9+.-])(?:{_SCHEMES}):(?=\S)\S*", re.I)),
    ("an email address", re.compile(rf"[\w.+'%-]+@{_LABEL}(?:{_DOT}{_LABEL})*")),
    (
        "a web address",
        re.compile(
            rf"(?<![\w@-])(?:www\d?{_DOT}\S+|(?:{_LABEL}{_DOT})+[^\W\d_]{{2,63}}\b\S*"
            rf"|\d{{1,3}}(?:{_DOT}\d{{1,3}}){{3}}\S*|/{{2}}{_LABEL}\S*)",
            re.I,
        ),
    ),
]
LINK_RULES = frozenset({"a link", "a URI scheme", "an email address", "a web address"})


class UnsafeData(PermanentError):
    """Source data that cannot be used safely: the upsell stops for a human, with the field and the rule named."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field} {rule}")
        self.field = field
        self.rule = rule

    def __reduce__(self) -> tuple[Any, ...]:  # Prefect may pickle a failed task's exception
        return (UnsafeData, (self.field, self.rule))


def is_invisible(char: str, *, keep_newlines: bool = False) -> bool:
    """A control, format (zero-width, bidi), private, unassigned or blank-rendering character."""
    if keep_newlines and char == "\n":
        return False
    return unicodedata.category(char) in _REMOVED_CATEGORIES or char in _INVISIBLE or 0xFE00 <= ord(char) <= 0xFE0F


def normalise(value: object) -> str:
    """NFKC, invisible characters removed, whitespace collapsed to single spaces, stripped."""
    text = unicodedata.normalize("NFKC", str(value))
    kept = (" " if c.isspace() else c for c in text if c.isspace() or not is_invisible(c))
    return " ".join("".join(kept).split())


def findings(text: str) -> list[str]:
    """The rules `text` breaks (links, addresses, schemes, markup, chat controls), in policy order."""
    return [rule for rule, pattern in PATTERNS if pattern.search(text)]


def cap(text: str, limit: int) -> str:
    """`text` cut to `limit` characters at a word boundary, with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0] or text[: limit - 1]
    return cut.rstrip(" ,;:-") + "…"


def clean_text(value: object, field: str) -> str:
    """Long free text: normalised, every link, address, scheme, markup and chat control removed, capped."""
    text = normalise(value)
    for _ in range(3):  # a removal leaves a space, so it cannot join two harmless parts into a link; check anyway
        for _rule, pattern in PATTERNS:
            text = pattern.sub(" ", text)
        text = " ".join(text.split())
        if not findings(text):
            break
    else:
        return ""
    return cap(text, CAPS[field])


def clean_name(value: object, field: str, neutral: str = "") -> str:
    """A short field (name, plan, metric): normalised and capped, or `neutral` when it carries anything unsafe."""
    text = normalise(value)
    if not text or findings(text):
        return neutral
    return cap(text, CAPS[field])


def clean_date(value: object) -> str:
    """An ISO date (YYYY-MM-DD) as text, or "" when the source sent anything else."""
    text = normalise(value)[:10]
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        return ""


def clean_data(value: Any, depth: int = 0) -> Any:
    """Free-form source data (contract terms, usage context): strings cleaned, non-finite numbers dropped."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return value if math.isfinite(value) else None
    if depth >= MAX_DATA_DEPTH:
        return None
    if isinstance(value, dict):
        items = list(value.items())[:MAX_DATA_ITEMS]
        cleaned = {clean_name(k, "data_key"): clean_data(v, depth + 1) for k, v in items}
        return {k: v for k, v in cleaned.items() if k}
    if isinstance(value, list | tuple):
        return [clean_data(v, depth + 1) for v in list(value)[:MAX_DATA_ITEMS]]
    return clean_text(value, "data_value")


def checked_number(value: object, field: str, *, upper: float, lower: float = 0.0) -> float:
    """A finite number within [lower, upper], or UnsafeData naming the field."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnsafeData(field, "is not a number")
    if not math.isfinite(value):
        raise UnsafeData(field, "is not a finite number")
    if value < lower:
        raise UnsafeData(field, "is negative" if lower == 0 else f"is below {lower:g}")
    if value > upper:
        raise UnsafeData(field, f"is above the cap of {upper:g}")
    return float(value)


def checked_email(value: object, field: str = "contact_info.email") -> str:
    """Exactly one email address, checked by a real parser (no display name, no list), normalised."""
    text = str(value or "")
    if not text.strip():
        raise UnsafeData(field, "is missing")
    if text != normalise(text):
        raise UnsafeData(field, "holds spaces or invisible characters")
    try:
        return validate_email(text, check_deliverability=False).normalized
    except EmailNotValidError:
        raise UnsafeData(field, "is not one valid email address") from None
