"""A customer's emailed reply to an upsell email: its headers, its new words, whether a machine sent it, its intent.

Everything in an inbound email is untrusted text: headers may be malformed or encoded (RFC 2047), parts may carry
wrong charsets, HTML may be broken. `parse_reply` never raises on such input; it returns what it could read.

The new words are the first text/plain part (else the HTML part as text, quotes dropped by their markup), cut at the
first quote header ("On … wrote:", "From: … Sent: …", "-----Original Message-----", in several languages), with
quoted ("> ") lines and the signature removed (mail-parser-reply, guarded so a sentence starting with "Thanks," is
not taken for a sign-off).
"""

from __future__ import annotations

import codecs
import re
from email import message_from_bytes
from email.header import Header, decode_header
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses, parseaddr
from html.parser import HTMLParser

from mailparser_reply.parser import EmailMessage as ReplyText
from pydantic import BaseModel, Field

from blocks.interfaces import ReplyIntent
from blocks.reply_rules import classify_rules

__all__ = ["InboundReply", "ReplyIntent", "classify_rules", "html_to_text", "parse_reply", "plus_tokens", "reply_text"]

#: The longest `text` kept: the customer's new words, for a classifier and a person to read.
MAX_TEXT = 2000
#: The longest body read (new words come first; the rest is quotes, and the quote parser's regexes are not linear).
MAX_BODY = 20_000
MAX_SUBJECT = 300
MAX_ADDRESSES = 50
MAX_PARTS = 100
#: The most text given to mail-parser-reply: its quote-header regexes take time quadratic in a line's length
#: (0.2 s at worst for this much; 7 s for 18,000 characters), and only the first MAX_TEXT characters are kept.
LIBRARY_CHARS = MAX_TEXT + 500
#: Languages of mail-parser-reply's quote headers and sign-offs (it has no pt; ours below covers pt's "escreveu").
LANGUAGES = ["en", "de", "fr", "es", "it", "nl", "sv", "da", "pl", "cs", "ja", "ko", "zh"]


class InboundReply(BaseModel):
    """What an inbound email says, read as untrusted text: ids with their angle brackets, addresses in lower case."""

    message_id: str = ""
    in_reply_to: str = ""
    references: list[str] = Field(default_factory=list)
    from_address: str = ""
    from_addresses: list[str] = Field(default_factory=list, description="Every From address (one, when honest).")
    dkim_domains: list[str] = Field(
        default_factory=list, description="The signing domains (d=) of the email's DKIM-Signature headers."
    )
    to_addresses: list[str] = Field(default_factory=list)
    cc_addresses: list[str] = Field(default_factory=list)
    reply_to_addresses: list[str] = Field(default_factory=list)
    subject: str = ""
    text: str = Field(default="", description="The customer's new words: quotes and signature removed.")
    auto_reply: bool = False
    auto_reply_reason: str = ""

    @property
    def recipients(self) -> list[str]:
        """To and Cc, each address once: where a reply's plus address (`upsell+<token>@…`) is."""
        return list(dict.fromkeys([*self.to_addresses, *self.cc_addresses]))


# ---- headers ----

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_MSG_ID = re.compile(r"<([^<>\s]{1,250})>")
_ADDRESS = re.compile(r"^[^\s@<>()\[\],;:\"]{1,64}@[^\s@<>()\[\],;:\"]{1,255}$")


def _headers(msg: Message, name: str) -> list[str | Header]:
    """Every value of a header, undecoded (a `Header` when it holds raw 8-bit bytes); nothing when unreadable."""
    try:
        return list(msg.get_all(name) or [])
    except Exception:  # degraded on purpose: a header the email package cannot read counts as absent
        return []


def _decoded(value: str | Header) -> str:
    """A header value as text: RFC 2047 words decoded, raw 8-bit bytes read as UTF-8 (else Windows-1252)."""
    try:
        chunks = decode_header(value)
    except Exception:  # degraded on purpose: an undecodable header is kept as it came
        return str(value)
    return "".join(chunk if isinstance(chunk, str) else _bytes_text(chunk, charset) for chunk, charset in chunks)


def _raw(value: str | Header) -> str:
    """A header value as it came (raw 8-bit bytes read as text), RFC 2047 words left encoded."""
    return value if isinstance(value, str) else _decoded(value)  # a Header's chunks are its raw bytes


def _bytes_text(data: bytes, charset: str | None) -> str:
    if charset not in (None, "unknown-8bit"):
        return data.decode(_codec(charset), errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _codec(charset: str | None) -> str:
    try:
        return codecs.lookup(charset or "utf-8").name
    except (LookupError, ValueError, TypeError):
        return "utf-8"


def _one_line(value: str, cap: int) -> str:
    return re.sub(r"\s+", " ", _CONTROL.sub("", value.replace("\r", " ").replace("\n", " "))).strip()[:cap]


def _header(msg: Message, name: str, cap: int = MAX_SUBJECT) -> str:
    values = _headers(msg, name)
    return _one_line(_decoded(values[0]), cap) if values else ""


def _addresses(msg: Message, *names: str) -> list[str]:
    # encoded words stay encoded: they are display names, and a decoded one could smuggle in a comma or an address
    values = [_one_line(_raw(v), 10_000) for name in names for v in _headers(msg, name)]
    try:
        pairs = getaddresses(values)
    except Exception:  # degraded on purpose: an unparseable address list yields no addresses
        return []
    found = [address.strip().lower() for _, address in pairs]
    return list(dict.fromkeys(a for a in found if _ADDRESS.match(a)))[:MAX_ADDRESSES]


def _message_ids(value: str) -> list[str]:
    return list(dict.fromkeys(f"<{i}>" for i in _MSG_ID.findall(value)))[:MAX_ADDRESSES]


_DKIM_DOMAIN = re.compile(r"(?:^|;)\s*d\s*=\s*([A-Za-z0-9.-]{1,253})\s*(?:;|$)")


def _dkim_domains(msg: Message) -> list[str]:
    """The d= tag of each DKIM-Signature header, lower case (which domain signed; SES says whether one passed)."""
    found = (_DKIM_DOMAIN.search(_one_line(_raw(v), 10_000)) for v in _headers(msg, "DKIM-Signature"))
    return list(dict.fromkeys(m[1].lower().rstrip(".") for m in found if m))[:MAX_ADDRESSES]


def plus_tokens(addresses: list[str]) -> list[str]:
    """The `<token>` of every `upsell+<token>@<domain>` address (prefix in any case), each once, in order."""
    tokens = []
    for address in addresses:
        _, bare = parseaddr(address)
        local, at, domain = (bare or address).strip().rpartition("@")
        if at and domain and local[:7].lower() == "upsell+" and (token := local[7:]) and not re.search(r"\s", token):
            tokens.append(token)
    return list(dict.fromkeys(tokens))


# ---- auto-replies ----

_AUTO_SUBJECT = re.compile(
    r"^\s*(?:out of (?:the )?office|automatic reply|auto(?:matic)?[- ]?(?:reply|response)|autoreply"
    r"|abwesenheitsnotiz|automatische antwort|r[ée]ponse automatique|absence du bureau|respuesta autom[áa]tica"
    r"|fuera de la oficina|automatisch antwoord|afwezig|risposta automatica|fuori sede|resposta autom[áa]tica"
    r"|fora do escrit[óo]rio)\b",
    re.IGNORECASE,
)
_AUTO_BODY = re.compile(
    r"\b(?:out of (?:the )?office|on (?:annual |parental |sick )?leave|on vacation|on holiday|limited access to"
    r" (?:my )?e-?mail|i (?:will|shall) be back|i am (?:currently )?away|abwesend|im urlaub|absente?s?\b"
    r"|en cong[ée]s?|fuera de la oficina|de vacaciones|afwezig|op vakantie|fuori ufficio|in ferie|de f[ée]rias)",
    re.IGNORECASE,
)


def _auto_reply(msg: Message, subject: str, text: str) -> str:
    """Why the email looks machine-sent (a header says so, or two weak signals agree); empty when it does not."""

    def first(name: str) -> str:
        values = _headers(msg, name)
        return _one_line(_decoded(values[0]), 60).lower() if values else ""

    auto_submitted = first("Auto-Submitted").split(";")[0].split("(")[0].strip()
    if auto_submitted and auto_submitted != "no":
        return f"Auto-Submitted: {auto_submitted}"
    for name in ("X-Autoreply", "X-Autorespond"):
        if _headers(msg, name):
            return f"{name} header"
    precedence = first("Precedence")
    if precedence in ("bulk", "junk", "auto_reply", "list"):
        return f"Precedence: {precedence}"
    if first("X-Autogenerated") == "reply":
        return "X-Autogenerated: Reply"
    if _content_type(msg) == "multipart/report":
        return "delivery status report"
    # Outlook sends X-Auto-Response-Suppress on ordinary mail too: it counts only with another weak signal.
    weak = []
    if re.search(r"\b(?:oof|all)\b", first("X-Auto-Response-Suppress")):
        weak.append("X-Auto-Response-Suppress")
    if _AUTO_SUBJECT.match(subject):
        weak.append("out-of-office subject")
    if _AUTO_BODY.search(text[:1000]):
        weak.append("out-of-office wording")
    return " and ".join(weak) if len(weak) >= 2 else ""


# ---- body ----


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:  # degraded on purpose: an unreadable Content-Type is plain text, as RFC 2045 says
        return "text/plain"


def _text_parts(msg: Message) -> tuple[str | None, str | None]:
    """The first inline text/plain and text/html parts (attachments and attached emails left out)."""
    plain: str | None = None
    html: str | None = None
    pending: list[Message] = [msg]
    seen = 0
    while pending and seen < MAX_PARTS and (plain is None or html is None):
        part = pending.pop(0)
        seen += 1
        kind = _content_type(part)
        if kind.startswith("message/"):
            continue  # a forwarded or attached email: not the customer's words
        if part.is_multipart():
            payload = part.get_payload()
            children = [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []
            pending[:0] = children
            continue
        disposition = " ".join(map(_raw, _headers(part, "Content-Disposition"))).lower()
        if "attachment" in disposition or kind not in ("text/plain", "text/html"):
            continue
        text = _payload_text(part)
        if kind == "text/plain" and plain is None and text.strip():
            plain = text
        elif kind == "text/html" and html is None and text.strip():
            html = text
    return plain, html


def _payload_text(part: Message) -> str:
    try:
        data = part.get_payload(decode=True)
    except Exception:  # degraded on purpose: an undecodable transfer encoding reads as empty
        return ""
    if not isinstance(data, bytes):
        return ""
    try:
        charset = part.get_content_charset()
    except Exception:  # degraded on purpose: a broken charset parameter means UTF-8
        charset = None
    try:
        return data[: MAX_BODY * 4].decode(_codec(charset), errors="replace")[:MAX_BODY]
    except Exception:  # degraded on purpose: a codec that fails on its own input falls back to UTF-8
        return data[: MAX_BODY * 4].decode("utf-8", errors="replace")[:MAX_BODY]


class _HtmlText(HTMLParser):
    """Visible text of an HTML body, without styles, scripts, quotes (blockquote, Gmail's and Thunderbird's quote
    blocks) or marked signatures; Outlook's reply header (`divRplyFwdMsg`, `appendonsend`) ends the new words."""

    SKIP_TAGS = frozenset({"style", "script", "head", "title", "blockquote", "template", "noscript", "svg", "object"})
    SKIP_CLASSES = frozenset({"gmail_quote", "gmail_signature", "moz-cite-prefix", "moz-signature", "yahoo_quoted"})
    STOP_IDS = frozenset({"divrplyfwdmsg", "appendonsend", "divrplyfwdmsg_"})
    BREAKS = frozenset(
        {"br", "p", "div", "tr", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "pre", "section"}
    )
    VOID = frozenset({"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "wbr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.skipping: str | None = None
        self.depth = 0
        self.stopped = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.stopped:
            return
        if self.skipping is not None:
            self.depth += tag == self.skipping
            return
        attributes = {name.lower(): (value or "") for name, value in attrs}
        if attributes.get("id", "").lower() in self.STOP_IDS:
            self.stopped = True
            return
        classes = set(attributes.get("class", "").lower().split())
        if tag in self.SKIP_TAGS or classes & self.SKIP_CLASSES or attributes.get("id", "").lower() == "signature":
            if tag not in self.VOID:
                self.skipping, self.depth = tag, 1
            return
        if tag in self.BREAKS:
            self.chunks.append("\n")
        if tag == "li":
            self.chunks.append("* ")

    def handle_endtag(self, tag: str) -> None:
        if self.stopped:
            return
        if self.skipping is not None:
            if tag == self.skipping:
                self.depth -= 1
                if self.depth == 0:
                    self.skipping = None
            return
        if tag in self.BREAKS:
            self.chunks.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.stopped and self.skipping is None:
            self.chunks.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """The visible new words of an HTML body, one line per block (see `_HtmlText`); never markup."""
    parser = _HtmlText()
    try:
        parser.feed(html[: MAX_BODY * 5])
        parser.close()
    except Exception:  # degraded on purpose: broken markup keeps the text read before the break
        pass
    lines = [line.strip() for line in "".join(parser.chunks).replace("\xa0", " ").splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# ---- the new words ----

#: A quote header: "On … wrote:" and its translations (Gmail may wrap it over two lines; Apple Mail quotes it).
_WROTE = re.compile(
    r"^(?:>\s*)*(?:on|am|le|el|op|il|em|den|dne|dnia|w dniu|il giorno)\b.{0,300}?"
    r"(?:wrote|schrieb|a\s+[ée]crit|escribi[óo]|schreef|ha\s+scritto|escreveu|skrev|napsal\(a\)|napisa[łl]\(a\))\s*:?$",
    re.IGNORECASE | re.DOTALL,
)
_FROM_LINE = re.compile(r"^\*?\s*(?:from|von|de|van|da|från|fra|od)\s*:\*?\s*\S", re.IGNORECASE)
_HEADER_LINE = re.compile(
    r"^\*?\s*(?:sent|date|to|subject|cc|gesendet|datum|an|betreff|envoy[ée]|[àa]|objet|enviado|fecha|para|asunto"
    r"|verzonden|aan|onderwerp|inviato|data|oggetto|assunto|skickat|till|[äa]mne)\s*:",
    re.IGNORECASE,
)
_SEPARATOR = re.compile(
    r"^[-_=]{2,}\s*(?:original message|ursprüngliche nachricht|originalnachricht|message d'origine|mensaje original"
    r"|oorspronkelijk bericht|messaggio originale|mensagem original|ursprungligt meddelande|forwarded message"
    r"|weitergeleitete nachricht|message transféré)\s*[-_=]{2,}$",
    re.IGNORECASE,
)
_RULE_LINE = re.compile(r"^[-_=*]{8,}$")
#: A line that is only a sign-off (the signature starts there) or a "sent from my phone" line.
_SIGN_OFF = re.compile(
    r"^(?:--|—|best(?: regards| wishes)?|kind(?:est)? regards|regards|warm(?:est)? regards|many thanks"
    r"|thanks(?: again)?|thank you|cheers|all the best|sincerely|yours(?: sincerely| truly)?"
    r"|viele grüße|beste grüße|liebe grüße"
    r"|(?:mit )?freundlichen grüßen|freundliche grüße|grüße|gruß|lg|vg|mfg|cordialement|bien (?:à vous|cordialement)"
    r"|salutations|bonne journée|saludos(?: cordiales)?|un saludo|atentamente|met vriendelijke groet(?:en)?|groeten"
    r"|groet|mvg|cordiali saluti|saluti|distinti saluti|atenciosamente|abraços|obrigad[oa]|med vänliga hälsningar"
    r"|hälsningar|mvh)\s*[,.!]?$"
    r"|^(?:sent from my|sent from outlook|get outlook for|von meinem \S+ gesendet|gesendet von|envoyé de mon"
    r"|enviado desde mi|verstuurd vanaf mijn|verzonden vanaf mijn|inviato da|enviado do meu)\b",
    re.IGNORECASE,
)
_GREETING = re.compile(
    r"^(?:hi|hello|hey|dear|good (?:morning|afternoon)|hallo|guten tag|liebe[rs]?|sehr geehrte[rs]?|moin|servus"
    r"|bonjour|bonsoir|salut|cher|chère|hola|estimad[oa]|buenos días|hoi|beste|goedemorgen|ciao|buongiorno|gentile"
    r"|olá|ola|prezad[oa]|bom dia)\b(?:\s+[\w.'-]+){0,3}\s*[,!:]?$",
    re.IGNORECASE,
)


def _quote_start(lines: list[str]) -> int | None:
    """Index of the first line of the quoted email, or None when the text quotes nothing recognisable."""
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if _SEPARATOR.match(line) or _WROTE.match(line) or (nxt and _WROTE.match(f"{line}\n{nxt}")):
            return i
        if _FROM_LINE.match(line) and any(_HEADER_LINE.match(later) for later in lines[i + 1 : i + 5]):
            return i - 1 if i > 0 and _RULE_LINE.match(lines[i - 1]) else i
    return None


def _meaningful(text: str) -> bool:
    """Whether the text says anything beyond a greeting."""
    return any(re.search(r"\w", line) and not _GREETING.match(line) for line in text.splitlines())


def _without_signature(text: str) -> str:
    """The text without its signature: mail-parser-reply's, when its signature starts at a sign-off line, and cut
    at our own sign-off lines; the text as it was when that would leave nothing but a greeting."""
    text = text[:LIBRARY_CHARS]
    try:
        first = ReplyText(text=text, languages=list(LANGUAGES), keep_hyphen_lists=True).read().replies[0]
        signature_line = first.signatures.strip().splitlines()[0] if first.signatures.strip() else ""
        body = first.body if _SIGN_OFF.match(signature_line.lstrip("> ").strip()) else first.full_body
    except Exception:  # degraded on purpose: a library failure on hostile text leaves the signature in
        body = text
    lines = body.splitlines()
    cut = next((i for i, line in enumerate(lines) if i > 0 and _SIGN_OFF.match(line.strip())), len(lines))
    kept = "\n".join(lines[:cut]).strip()
    return kept if _meaningful(kept) else body.strip()


def reply_text(body: str) -> str:
    """The customer's new words in a plain-text body: quotes, quote headers and signature removed, capped."""
    text = _CONTROL.sub("", body[:MAX_BODY].replace("\r\n", "\n").replace("\r", "\n"))
    lines = [line.strip() for line in text.split("\n")]
    start = _quote_start(lines)
    top = [line for line in (lines if start is None else lines[:start]) if not line.startswith(">")]
    if not _meaningful("\n".join(top)) and start is not None:
        # bottom-posted: the answer is below the quote; keep every line that is not quoted or a quote header
        top = [line for i, line in enumerate(lines) if i != start and not line.startswith(">")]
    words = _without_signature("\n".join(top).strip())
    words = re.sub(r"\n{3,}", "\n\n", words).strip()
    return words[:MAX_TEXT].rstrip()


def parse_reply(raw: bytes) -> InboundReply:
    """Reads an inbound email (RFC 5322 bytes). Never raises: malformed input gives a best-effort, emptier result."""
    try:
        msg = message_from_bytes(bytes(raw), policy=compat32)
    except Exception:  # degraded on purpose: the email package refused the bytes; nothing can be read
        return InboundReply()
    references = _message_ids(" ".join(map(_raw, _headers(msg, "References"))))
    in_reply_to = _message_ids(" ".join(map(_raw, _headers(msg, "In-Reply-To"))))
    subject = _header(msg, "Subject")
    plain, html = _text_parts(msg)
    body = plain if plain is not None else html_to_text(html) if html is not None else ""
    text = reply_text(body)
    froms = _addresses(msg, "From")
    reason = _auto_reply(msg, subject, text)
    return InboundReply(
        message_id=(_message_ids(" ".join(map(_raw, _headers(msg, "Message-ID")))) or [""])[0],
        in_reply_to=(in_reply_to or [""])[0],
        references=references,
        from_address=froms[0] if froms else "",
        from_addresses=froms,
        dkim_domains=_dkim_domains(msg),
        to_addresses=_addresses(msg, "To"),
        cc_addresses=_addresses(msg, "Cc"),
        reply_to_addresses=_addresses(msg, "Reply-To"),
        subject=subject,
        text=text,
        auto_reply=bool(reason),
        auto_reply_reason=reason,
    )
