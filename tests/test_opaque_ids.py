"""Nothing an outsider sees predicts an identifier, and nobody but the contact answers for the contact: link tokens,
reply addresses, Message-IDs and idempotency keys carry no run id, event id or address, and cannot be forged; the
rule that decides whether an emailed reply is the customer's own."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tasks.content.replies import parse_reply
from tasks.runtime.links import (
    InvalidToken,
    LinkToken,
    canonical_token,
    keyed_id,
    read_reply_address,
    reply_address,
    sign_token,
    verify_token,
)
from tasks.send_email_draft import idempotency_key
from tests.fakes.sns import raw_email
from webhook.inbound import unverified_because
from webhook.main import create_app
from webhook.settings import ReceiverSettings

SECRET = "the-link-secret-of-these-tests-0123456789"
FORMER_DEFAULT = "development-only-link-secret"
RUN = str(uuid.uuid4())
CONTACT = "Dana.Whitfield@Acme-Trading.example.com"
DOMAIN = "replies.example.com"


def _token(wait: str = "reply", value: dict[str, Any] | None = None) -> LinkToken:
    return LinkToken(flow_run_id=RUN, wait=wait, value=value or {"reply": "yes"}, expires_at=4_000_000_000,
                     nonce="evt-2024-0002")  # fmt: skip


def _every_reading(text: str) -> str:
    """The text and what base64 or base32 decoding of it (or of its parts) shows, lower case."""
    seen = [text]
    for part in [text, *text.replace("+", "-").replace("@", "-").replace(".", "-").split("-")]:
        for decode in (base64.urlsafe_b64decode, base64.b32decode):
            for padded in (part, part.upper()):
                try:
                    seen.append(decode(padded + "=" * (-len(padded) % 8)).decode("latin-1"))
                except ValueError:
                    pass
    return "\n".join(seen).lower()


def test_a_link_token_shows_no_run_id_event_id_or_address_and_reads_back() -> None:
    unsubscribe = _token("unsubscribe", {"email": CONTACT})
    signed = sign_token(unsubscribe, SECRET)
    readable = _every_reading(signed)
    for secret_part in (RUN, RUN.replace("-", ""), "evt-2024-0002", CONTACT.lower(), "acme-trading"):
        assert secret_part.lower() not in readable, secret_part
    assert verify_token(signed, SECRET, now=1_000_000_000) == unsubscribe
    assert sign_token(unsubscribe, SECRET) == signed  # a resumed run rebuilds the same links
    assert sign_token(_token(), SECRET) != signed
    assert canonical_token(signed) and not canonical_token(signed + "=") and not canonical_token(signed + "!")


def _former_format(token: LinkToken, secret: str) -> str:
    """A token as the receiver used to sign them: readable JSON, a dot, an HMAC."""
    payload = base64.urlsafe_b64encode(token.model_dump_json().encode()).rstrip(b"=").decode()
    mac = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


@pytest.mark.parametrize("forge", [
    lambda t: sign_token(t, FORMER_DEFAULT),
    lambda t: _former_format(t, FORMER_DEFAULT),
    lambda t: _former_format(t, SECRET),
    lambda t: sign_token(t, SECRET)[:-2] + ("AA" if not sign_token(t, SECRET).endswith("AA") else "BB"),
], ids=["new format, former default", "former format, former default", "former format, real secret", "altered"])
def test_a_forged_token_is_refused_by_the_code_and_by_the_receiver(forge: Any, tmp_path: Any) -> None:
    with pytest.raises(InvalidToken):
        verify_token(forge(_token()), SECRET)
    settings = ReceiverSettings(webhook_secrets=["s" * 32], link_secret=SECRET, data_dir=tmp_path,
                                receiver_db=tmp_path / "receiver.db")  # type: ignore[arg-type]  # fmt: skip
    with TestClient(create_app(settings)) as client:
        for route, token in [("links", forge(_token())),
                             ("unsubscribe", forge(_token("unsubscribe", {"email": CONTACT})))]:  # fmt: skip
            assert client.get(f"/{route}/{token}").status_code == 403, route
            answer = client.post(f"/{route}/{token}", content=b"List-Unsubscribe=One-Click",
                                 headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
            assert answer.status_code == 403, (route, answer.text)


def test_a_reply_address_names_its_run_to_us_alone_and_knows_its_contact() -> None:
    address = reply_address(RUN, CONTACT, SECRET, DOMAIN)
    local = address.split("@")[0]
    assert len(local) <= 64 and address.endswith(f"@{DOMAIN}")
    assert RUN.replace("-", "") not in _every_reading(address) and "dana" not in _every_reading(address)
    found = read_reply_address(address.upper(), SECRET, DOMAIN)  # mail systems may change the case
    assert found is not None and found.flow_run_id == RUN
    assert found.written_by(" dana.whitfield@ACME-trading.example.com ", SECRET)  # compared after normalisation
    assert not found.written_by("sam@acme-trading.example.com", SECRET)
    assert read_reply_address(address, "another-secret-of-32-characters-xx", DOMAIN) is None
    assert read_reply_address(address.replace(DOMAIN, "evil.example"), SECRET, DOMAIN) is None  # its domain counts
    assert read_reply_address(address, SECRET, "") is None  # no reply domain configured: nothing is ours
    tampered = f"{local[:-22]}{'a' * 13}{local[-9:]}@{DOMAIN}"
    assert read_reply_address(tampered, SECRET, DOMAIN) is None
    other = read_reply_address(reply_address(str(uuid.uuid4()), CONTACT, SECRET, DOMAIN), SECRET, DOMAIN)
    assert other is not None and other.flow_run_id != RUN


def test_keyed_ids_are_fixed_per_value_and_show_nothing() -> None:
    key = idempotency_key("evt-2024-0002", "offer", SECRET)
    assert key == idempotency_key("evt-2024-0002", "offer", SECRET) and "2024" not in key and "0002" not in key
    assert key != idempotency_key("evt-2024-0003", "offer", SECRET) != idempotency_key("evt-2024-0002", "follow-up",
                                                                                       SECRET)  # fmt: skip
    assert keyed_id(SECRET, "a", "x") != keyed_id(SECRET, "b", "x") != keyed_id(SECRET + "y", "a", "x")


# ---- whose reply it is ----

PASS = {"spfVerdict": {"status": "PASS"}, "dkimVerdict": {"status": "PASS"}, "dmarcVerdict": {"status": "PASS"}}


def _why(sender: str = f"Dana <{CONTACT}>", envelope: str = CONTACT, dkim: str | None = "acme-trading.example.com",
         verdicts: dict[str, str] | None = None, extra_from: str = "") -> str:  # fmt: skip
    signed = read_reply_address(reply_address(RUN, CONTACT, SECRET, DOMAIN), SECRET, DOMAIN)
    assert signed is not None
    email = raw_email(sender=sender + extra_from, to=f"x@{DOMAIN}", dkim_domain=dkim)
    receipt = {f"{k}Verdict": {"status": v} for k, v in (verdicts or {}).items()}
    return unverified_because(signed, parse_reply(email), {**PASS, **receipt}, {"source": envelope}, SECRET)


def test_only_the_contact_with_a_vouched_for_domain_answers() -> None:
    assert _why() == ""
    assert _why(dkim=None) == ""  # SPF passed for the contact's own envelope domain
    assert _why(envelope="bounces@mail.acme-trading.example.com", dkim=None) == ""  # a subdomain is aligned
    assert _why(envelope="x@evil.example", verdicts={"spf": "FAIL"}) == ""  # DKIM of the contact's domain passed
    assert _why(verdicts={"dmarc": "GRAY"}) == ""  # no DMARC record: not a failure
    assert "not the contact" in _why(sender="Sam <sam@acme-trading.example.com>")
    assert "not the contact" in _why(sender="attacker@evil.example")
    assert "2 senders" in _why(extra_from=", attacker@evil.example")
    assert "DMARC failed" in _why(verdicts={"dmarc": "FAIL"})
    assert "neither SPF nor DKIM" in _why(verdicts={"spf": "FAIL", "dkim": "FAIL"})
    assert "neither SPF nor DKIM" in _why(envelope="x@evil.example", dkim="evil.example")  # nothing aligned passed
    assert "neither SPF nor DKIM" in _why(verdicts={"spf": "GRAY", "dkim": "PROCESSING_FAILED"})
    assert "neither SPF nor DKIM" in _why(envelope="x@acme-trading.example.com.evil.example", dkim=None)


def test_the_description_of_a_verdict_is_json_safe() -> None:
    json.dumps({"why": _why(sender="attacker@evil.example")})  # recorded by the receiver as a row's detail
