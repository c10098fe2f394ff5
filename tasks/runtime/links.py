"""Signed, expiring tokens for the reply, approval and unsubscribe links served by the receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from typing import Any

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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_token(token: LinkToken, secret: str) -> str:
    """`<payload>.<hmac>`, both base64url."""
    payload = _b64(token.model_dump_json().encode())
    mac = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def verify_token(text: str, secret: str, now: float | None = None) -> LinkToken:
    """Check the signature, then the expiry; raise InvalidToken with the reason."""
    try:
        payload, mac = text.split(".", 1)
        given = _unb64(mac)
    except ValueError as exc:
        raise InvalidToken("malformed token") from exc
    expected = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(given, expected):
        raise InvalidToken("bad signature")
    try:
        token = LinkToken.model_validate(json.loads(_unb64(payload)))
    except ValueError as exc:
        raise InvalidToken("malformed token") from exc
    if token.expires_at < (now if now is not None else time.time()):
        raise InvalidToken("link expired", expired=True)
    return token


def link_for(base_url: str, secret: str, token: LinkToken, route: str = "links") -> str:
    return f"{base_url.rstrip('/')}/{route}/{sign_token(token, secret)}"


#: The local part of a reply address: `upsell+<flow run id, 32 hex>-<signature, 12 hex>`.
REPLY_LOCAL_PART = re.compile(r"^upsell\+(?P<run>[0-9a-f]{32})-(?P<sig>[0-9a-f]{12})$")


def reply_address(flow_run_id: str, secret: str, domain: str) -> str:
    """The signed Reply-To of a run's emails: a reply to it names its run, and only we can make one."""
    run = uuid.UUID(str(flow_run_id)).hex
    return f"upsell+{run}-{_reply_signature(run, secret)}@{domain}"


def run_of_reply_address(address: str, secret: str) -> str | None:
    """The flow run id a reply address names, when its signature is ours (None otherwise: never guessed)."""
    local = address.strip().lower().rsplit("@", 1)[0]
    found = REPLY_LOCAL_PART.match(local)
    if found is None or not hmac.compare_digest(found["sig"], _reply_signature(found["run"], secret)):
        return None
    return str(uuid.UUID(found["run"]))


def _reply_signature(run_hex: str, secret: str) -> str:
    return hmac.new(secret.encode(), f"reply:{run_hex}".encode(), hashlib.sha256).hexdigest()[:12]
