"""What "contained" means for an outgoing message: the oracle of the adversarial corpus tests.

Independent of the product's own check: links are found with linkify-it (fuzzy links, emails and IPs, as mail
and chat clients find them), markup with the standard HTML parser, and hostile content by the corpus' canaries.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from email import policy
from email.parser import BytesParser
from email.utils import getaddresses
from html.parser import HTMLParser
from typing import Any

from linkify_it import LinkifyIt

from tests.hostile_corpus import CANARIES

PUBLIC_BASE = "http://127.0.0.1:8000/"  # the settings' default public base URL: the email's only links
TEMPLATE_TAGS = {"html", "body", "p", "strong", "ul", "li", "a", "br", "hr"}
HEADERS = {
    "from", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post", "mime-version",
    "content-type",
}  # fmt: skip


class Html(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.hrefs: list[str] = []
        self.strings: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            (self.hrefs if name == "href" else self.strings).append(value or "")

    def handle_data(self, data: str) -> None:
        self.strings.append(data)


_LINKIFY = LinkifyIt(options={"fuzzy_link": True, "fuzzy_email": True, "fuzzy_ip": True})


def text_failures(where: str, text: str, allowed: tuple[str, ...], *, multiline: bool) -> list[str]:
    failures = []
    folded = unicodedata.normalize("NFKC", text).lower()
    failures += [f"{where}: canary {c!r}" for c in CANARIES if c.lower() in folded]
    bad = [c for c in text if unicodedata.category(c) in ("Cf", "Co", "Cn", "Cs")]
    bad += [c for c in text if unicodedata.category(c) == "Cc" and not (multiline and c in "\r\n\t")]
    if bad:
        failures.append(f"{where}: invisible or control characters {bad!r}")
    for match in _LINKIFY.match(text) or []:
        if not match.url.startswith(allowed):
            failures.append(f"{where}: foreign link {match.url!r}")
    return failures


def email_failures(raw: bytes | None, recipient: str) -> list[str]:
    """What in a built `.eml` breaks containment (empty: contained)."""
    if raw is None:
        return ["no email was sent"]
    message = BytesParser(policy=policy.default).parsebytes(raw)
    failures = [f"header {h}" for h in {k.lower() for k in message.keys()} - HEADERS]
    if message["To"] != recipient or len(getaddresses([str(message["To"])])) != 1:
        failures.append("To is not the one contact address")
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    return failures + content_failures(str(message["Subject"]), text, html)


def content_failures(subject: str, text: str, html: str) -> list[str]:
    """What in an email's subject, text part and HTML part breaks containment."""
    failures = text_failures("Subject", subject, (), multiline=False)
    failures += text_failures("text part", text, (PUBLIC_BASE,), multiline=True)
    parsed = Html()
    parsed.feed(html)
    failures += [f"HTML part: tag {t}" for t in parsed.tags - TEMPLATE_TAGS]
    failures += [f"HTML part: foreign href {h!r}" for h in parsed.hrefs if not h.startswith(PUBLIC_BASE)]
    failures += text_failures("HTML part", " ".join(parsed.strings), (PUBLIC_BASE,), multiline=True)
    return failures


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def slack_failures(message: dict[str, Any] | None, ui_base: str) -> list[str]:
    """What in a Slack post (text and blocks) breaks containment; `ui_base` is the run link's allowed prefix."""
    if message is None:
        return ["no Slack message"]
    failures = []
    for text in [message.get("text", ""), *strings_in(message.get("blocks", []))]:
        for sequence in re.findall(r"<([^<>]*)>", text):
            if not sequence.startswith((ui_base, PUBLIC_BASE)):
                failures.append(f"Slack: control sequence or foreign link <{sequence}>")
        rest = re.sub(r"<[^<>]*>", " ", text)
        failures += text_failures("Slack", rest, (), multiline=True)
    return failures
