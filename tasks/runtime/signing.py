"""`X-Upsell-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">` (the Stripe scheme): the
signing side, shared by whoever posts to the receiver (the backfill, the CLI, tests) and by its verify side."""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Upsell-Signature"


def compute_signature(secret: bytes | str, timestamp: int, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: bytes | str, timestamp: int | None = None) -> str:
    """The header value for `body` (what the metrics system sends; used by the backfill, tests, the bench and docs)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={compute_signature(secret, t, body)}"
