"""Tokens and addresses only we can make, that tell an outsider nothing: the reply, approval and unsubscribe
links served by the receiver, the signed Reply-To of a run's emails, and the keyed ids of outgoing messages.

Every value that leaves in an email or a link is derived from the link secret: a link token is the encrypted,
authenticated (AES-GCM) `LinkToken`, so neither the run id nor the contact's address can be read from it; a reply
address carries the run id encrypted (one AES block) with a MAC, and a tag binding it to the contact; a Message-ID
or idempotency header is an HMAC of the event id. None of them can be predicted from another, or forged, without
the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel


class LinkToken(BaseModel):
    """What a link answers: the flow run, the wait (pause key) and the value it carries."""

    flow_run_id: str
    wait: str
    value: dict[str, Any]
    expires_at: int
    nonce: str = ""


class InvalidToken(Exception):
    """A token that is forged, malformed or expired."""

    def __init__(self, reason: str, *, expired: bool = False) -> None:
        super().__init__(reason)
        self.expired = expired


def _key(secret: str, purpose: str, size: int = 32) -> bytes:
    """A key of its own for each use of the link secret (HMAC-SHA256 of the purpose)."""
    return hmac.new(secret.encode(), f"upsell/{purpose}".encode(), hashlib.sha256).digest()[:size]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict base64url without padding: one spelling per value (a lenient decoder would let one link be used
    once per spelling, since a used link is known by its text)."""
    if not _B64URL.fullmatch(text):
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not the canonical spelling")
    return data


_B64URL = re.compile(r"[A-Za-z0-9_-]+")
#: The token's associated data: a token of another format or purpose never decrypts as a link.
_TOKEN_AAD = b"upsell-link-token-v2"
_NONCE = 12


def sign_token(token: LinkToken, secret: str) -> str:
    """The token encrypted and authenticated (AES-GCM), base64url: `<nonce><ciphertext><tag>`.

    The nonce is an HMAC of the plaintext (a synthetic IV), so the same token always reads the same (a resumed
    run rebuilds the links it sent) and two different tokens never share a nonce.
    """
    plaintext = token.model_dump_json().encode()
    nonce = hmac.new(_key(secret, "link-token/iv"), plaintext, hashlib.sha256).digest()[:_NONCE]
    return _b64(nonce + AESGCM(_key(secret, "link-token/aes")).encrypt(nonce, plaintext, _TOKEN_AAD))


def verify_token(text: str, secret: str, now: float | None = None) -> LinkToken:
    """Decrypt and authenticate the token, then check its expiry; raise InvalidToken with the reason."""
    try:
        raw = _unb64(text)
    except (ValueError, binascii.Error) as exc:
        raise InvalidToken("malformed token") from exc
    if len(raw) <= _NONCE + 16:
        raise InvalidToken("malformed token")
    try:
        plaintext = AESGCM(_key(secret, "link-token/aes")).decrypt(raw[:_NONCE], raw[_NONCE:], _TOKEN_AAD)
    except InvalidTag:
        raise InvalidToken("bad signature") from None
    try:
        token = LinkToken.model_validate(json.loads(plaintext))
    except ValueError as exc:
        raise InvalidToken("malformed token") from exc
    if token.expires_at < (now if now is not None else time.time()):
        raise InvalidToken("link expired", expired=True)
    return token


def canonical_token(text: str) -> bool:
    """Whether `text` is spelled exactly as `sign_token` writes it (one spelling per link, see `_unb64`)."""
    try:
        _unb64(text)
    except (ValueError, binascii.Error):
        return False
    return True


def link_for(base_url: str, secret: str, token: LinkToken, route: str = "links") -> str:
    return f"{base_url.rstrip('/')}/{route}/{sign_token(token, secret)}"


def keyed_id(secret: str, purpose: str, value: str, size: int = 16) -> str:
    """An opaque id for `value` (lower-case base32 of an HMAC): the same for the same value, unpredictable and
    unreadable without the secret. For Message-IDs and idempotency headers, which must not show an event id."""
    digest = hmac.new(_key(secret, f"id/{purpose}"), value.encode(), hashlib.sha256).digest()[:size]
    return base64.b32encode(digest).decode().rstrip("=").lower()


# ---- signed reply addresses ----

#: `upsell+<run, AES-encrypted, 26 base32>-<MAC, 13>-<contact tag, 8>@<reply domain>`: 56 characters before the @.
REPLY_LOCAL_PART = re.compile(r"^upsell\+(?P<ref>[a-z2-7]{26})-(?P<sig>[a-z2-7]{13})-(?P<who>[a-z2-7]{8})$")


@dataclass(frozen=True)
class SignedReplyAddress:
    """A reply address we made: the run it names and the tag of the contact it was made for."""

    flow_run_id: str
    ref: str
    who: str

    def written_by(self, sender: str, secret: str) -> bool:
        """Whether `sender` (an email address) is the contact this address was made for."""
        return hmac.compare_digest(self.who, _contact_tag(self.ref, sender, secret))


def normalize_address(address: str) -> str:
    """An email address as compared: trimmed, case-folded, its domain in IDNA (ASCII) form."""
    local, _, domain = address.strip().strip("<>").rpartition("@")
    try:
        domain = domain.strip().rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        domain = domain.strip().rstrip(".")
    return f"{local.casefold()}@{domain.casefold()}"


def reply_address(flow_run_id: str, contact_email: str, secret: str, domain: str) -> str:
    """The signed Reply-To of a run's emails: only we can make one, it names its run to us alone, and it knows
    which contact it was written to (so a reply from anyone else is told apart)."""
    block = Cipher(algorithms.AES(_key(secret, "reply-address/aes", 16)), modes.ECB()).encryptor()
    ref = _b32(block.update(uuid.UUID(str(flow_run_id)).bytes) + block.finalize())
    return f"upsell+{ref}-{_reply_mac(ref, secret)}-{_contact_tag(ref, contact_email, secret)}@{domain.lower()}"


def read_reply_address(address: str, secret: str, domain: str) -> SignedReplyAddress | None:
    """The run a reply address names, when it is on our reply domain and its MAC is ours (None otherwise:
    never guessed)."""
    local, _, at = address.strip().strip("<>").lower().rpartition("@")
    found = REPLY_LOCAL_PART.match(local)
    if not domain or at.rstrip(".") != domain.lower() or found is None:
        return None
    if not hmac.compare_digest(found["sig"], _reply_mac(found["ref"], secret)):
        return None
    block = Cipher(algorithms.AES(_key(secret, "reply-address/aes", 16)), modes.ECB()).decryptor()
    run = block.update(base64.b32decode(found["ref"].upper() + "======")) + block.finalize()
    return SignedReplyAddress(str(uuid.UUID(bytes=run)), found["ref"], found["who"])


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _reply_mac(ref: str, secret: str) -> str:
    return _b32(hmac.new(_key(secret, "reply-address/mac"), ref.encode(), hashlib.sha256).digest()[:8])


def _contact_tag(ref: str, contact: str, secret: str) -> str:
    message = f"{ref}\0{normalize_address(contact)}".encode()
    return _b32(hmac.new(_key(secret, "reply-address/contact"), message, hashlib.sha256).digest()[:5])
