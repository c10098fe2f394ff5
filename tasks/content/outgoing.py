"""The last check on every built message: one recipient, clean headers, and only the product's own links.

Runs on the email (To, Subject, text part, HTML part, unsubscribe URL) and on the Slack post (fallback text,
every text object and every URL of its blocks) after they are built, whatever built them. A message that
fails it is not sent: the caller hands the upsell to a human with the problems found, which name the rule
and the part, never the offending text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from html.parser import HTMLParser
from typing import Any

from linkify_it import LinkifyIt

from flows.models import EmailDraft
from tasks.content.untrusted import LINK_RULES, UnsafeData, checked_email, findings, is_invisible
from tasks.runtime.links import REPLY_LOCAL_PART

_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s<>|\"']+", re.I)
_SLACK_SEQUENCE = re.compile(r"<([^<>]*)>")
#: The tags and attributes the email template uses; anything else in the HTML part is a failure.
_HTML_TAGS = frozenset({"html", "head", "body", "p", "br", "strong", "em", "b", "i", "ul", "ol", "li", "a", "hr"})
_HTML_ATTRIBUTES = frozenset({"href", "style"})
_STYLE_DANGER = re.compile(r"url\s*\(|expression\s*\(|@import|javascript:", re.I)


@dataclass(frozen=True)
class AllowedLinks:
    """The product's own links: URL prefixes (the receiver, the Prefect UI) and exact URLs (a meeting's join URL)."""

    prefixes: tuple[str, ...] = ()
    exact: tuple[str, ...] = ()

    def allows(self, url: str) -> bool:
        return url in self.exact or any(url.startswith(prefix) for prefix in self.prefixes)


def allowed_links(*bases: str, exact: tuple[str, ...] = ()) -> AllowedLinks:
    """Links under each base URL (scheme, host and port must match; the path must start after a '/')."""
    return AllowedLinks(prefixes=tuple(f"{b.rstrip('/')}/" for b in bases if b), exact=tuple(e for e in exact if e))


@cache
def _linkify() -> LinkifyIt:
    # The linkifier of markdown-it, with fuzzy links and emails: close to what mail and chat clients turn into links.
    return LinkifyIt(options={"fuzzy_link": True, "fuzzy_email": True, "fuzzy_ip": True})


def _without_allowed(text: str, allowed: AllowedLinks) -> str:
    return _URL.sub(lambda m: " " if allowed.allows(m.group(0)) else m.group(0), text)


def text_problems(text: str, allowed: AllowedLinks, *, multiline: bool = False) -> list[str]:
    """What in `text` breaks the policy: invisible characters, markup, and any link that is not allowed."""
    problems: list[str] = []
    if any(is_invisible(c, keep_newlines=multiline) for c in text):
        problems.append("an invisible or control character")
    rest = _without_allowed(text, allowed)
    for rule in findings(rest):
        problems.append(f"{rule} that is not the product's own" if rule in LINK_RULES else rule)
    for match in _linkify().match(rest) or []:
        kind = "an email address" if match.schema == "mailto:" else "a link"
        problems.append(f"{kind} that is not the product's own")
    return list(dict.fromkeys(problems))


class _HtmlReader(HTMLParser):
    def __init__(self, allowed: AllowedLinks) -> None:
        super().__init__(convert_charrefs=True)
        self.allowed = allowed
        self.problems: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _HTML_TAGS:
            self.problems.append("a tag that is not the template's")
        for name, value in attrs:
            if name not in _HTML_ATTRIBUTES:
                self.problems.append("an attribute that is not the template's")
            elif name == "href" and not (tag == "a" and self.allowed.allows(value or "")):
                self.problems.append("a link that is not the product's own")
            elif name == "style" and _STYLE_DANGER.search(value or ""):
                self.problems.append("a style that loads or runs something")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_comment(self, data: str) -> None:
        self.problems.append("an HTML comment")

    def handle_pi(self, data: str) -> None:
        self.problems.append("a processing instruction")


def html_problems(body: str, allowed: AllowedLinks) -> list[str]:
    """The HTML part: only the template's tags and attributes, allowed hrefs, and text that passes the policy."""
    reader = _HtmlReader(allowed)
    reader.feed(body)
    reader.close()
    return list(dict.fromkeys([*reader.problems, *text_problems(" ".join(reader.text), allowed, multiline=True)]))


def email_problems(draft: EmailDraft, allowed: AllowedLinks) -> list[str]:
    """Everything wrong with an email about to be sent; empty when it may go out."""
    problems: list[str] = []
    try:
        if checked_email(draft.to, "To") != draft.to:
            problems.append("To: not in its normalised form")
    except UnsafeData as exc:
        problems.append(f"To: {exc.rule}")
    if not draft.subject.strip():
        problems.append("Subject: empty")
    problems += [f"Subject: {p}" for p in text_problems(draft.subject, AllowedLinks())]
    problems += [f"text part: {p}" for p in text_problems(draft.body_text, allowed, multiline=True)]
    problems += [f"HTML part: {p}" for p in html_problems(draft.body_html, allowed)]
    if draft.reply_to and not REPLY_LOCAL_PART.match(draft.reply_to.rsplit("@", 1)[0]):
        problems.append("Reply-To: not the run's own reply address")
    for url in [draft.unsubscribe_url, *draft.reply_links.values()]:
        if url and not allowed.allows(url):
            problems.append("a reply or unsubscribe link that is not the product's own")
    return list(dict.fromkeys(problems))


def _text_objects(value: Any) -> Iterator[tuple[str, str]]:
    """(type, text) of every text object in Block Kit blocks, and ("url", url) of every URL field."""
    if isinstance(value, dict):
        if value.get("type") in ("mrkdwn", "plain_text") and isinstance(value.get("text"), str):
            yield value["type"], value["text"]
        for key, item in value.items():
            if key == "url":
                yield "url", str(item)
            elif isinstance(item, dict | list):
                yield from _text_objects(item)
    elif isinstance(value, list):
        for item in value:
            yield from _text_objects(item)


def mrkdwn_problems(text: str, allowed: AllowedLinks) -> list[str]:
    """Slack mrkdwn: every `<…>` is one of our links (no mention, no ping), and the rest passes the policy."""
    problems: list[str] = []
    for sequence in _SLACK_SEQUENCE.findall(text):
        target = sequence.split("|", 1)[0].strip()
        if target[:1] in ("!", "@", "#"):
            problems.append("a mention or channel ping")
        elif not allowed.allows(target):
            problems.append("a link that is not the product's own")
    labels = " ".join(s.split("|", 1)[1] for s in _SLACK_SEQUENCE.findall(text) if "|" in s)
    rest = _SLACK_SEQUENCE.sub(" ", text) + " " + labels
    return list(dict.fromkeys([*problems, *text_problems(rest, AllowedLinks(), multiline=True)]))


def slack_problems(text: str, blocks: list[dict[str, Any]], allowed: AllowedLinks) -> list[str]:
    """Everything wrong with a Slack post about to be sent; empty when it may go out."""
    problems = [f"fallback text: {p}" for p in mrkdwn_problems(text, allowed)]
    for kind, value in _text_objects(blocks):
        if kind == "url":
            if not allowed.allows(value):
                problems.append("blocks: a button link that is not the product's own")
        elif kind == "mrkdwn":
            problems += [f"blocks: {p}" for p in mrkdwn_problems(value, allowed)]
        else:
            problems += [f"blocks: {p}" for p in text_problems(value, AllowedLinks())]
    return list(dict.fromkeys(problems))


def mrkdwn(text: str) -> str:
    """Escape a data value for Slack mrkdwn (`&`, `<`, `>`), so no link, mention or ping can be formed from it."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def decision_buttons(decision_links: dict[str, str]) -> dict[str, Any]:
    """A Block Kit `actions` block with one button per signed decision link (approve in primary, others danger)."""
    return {
        "type": "actions",
        "elements": [
            {
                "type": "button",
                "text": {"type": "plain_text", "text": label.title()},
                "url": url,
                "style": "primary" if label == "approve" else "danger",
            }
            for label, url in decision_links.items()
        ],
    }
