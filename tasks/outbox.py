"""The local email stand-in: every email becomes an RFC 5322 `.eml` file in an outbox folder."""

from __future__ import annotations

import os
from email import policy
from email.parser import BytesParser
from pathlib import Path

from flows.models import EmailDraft
from tasks.email_message import build_message

#: Long URL headers (List-Unsubscribe) must stay plain ASCII, not RFC 2047 encoded-words: fold at 998.
WIRE_POLICY = policy.SMTP.clone(max_line_length=998)


class OutboxEmailSender:
    """Writes `<outbox>/<idempotency key>.eml`; the same key never produces a second file."""

    def __init__(self, outbox: Path, from_address: str = "upsell@localhost", from_name: str = "Upsell Team") -> None:
        self.outbox = outbox
        self.from_address = from_address
        self.from_name = from_name

    def __repr__(self) -> str:
        return f"OutboxEmailSender({str(self.outbox)!r})"

    def path_for(self, idempotency_key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in idempotency_key)
        return self.outbox / f"{safe}.eml"

    def send(self, draft: EmailDraft, *, idempotency_key: str) -> str:
        self.outbox.mkdir(parents=True, exist_ok=True)
        path = self.path_for(idempotency_key)
        if path.exists():  # written before a crash: the same email, not a new one
            with path.open("rb") as handle:
                return str(BytesParser(policy=policy.default).parse(handle)["Message-ID"])
        message = build_message(draft, from_address=self.from_address, from_name=self.from_name)
        tmp = path.with_suffix(".eml.tmp")
        tmp.write_bytes(message.as_bytes(policy=WIRE_POLICY))
        os.replace(tmp, path)  # atomic: the outbox never holds half an email
        return str(message["Message-ID"])
