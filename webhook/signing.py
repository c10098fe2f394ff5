"""The receiver's side of `X-Upsell-Signature` (the signing side is `tasks.runtime.signing`)."""

from __future__ import annotations

import hmac
import time

from tasks.runtime.signing import SIGNATURE_HEADER, compute_signature


class SignatureError(Exception):
    """Why a request's signature was refused (the text is sent back with the 401)."""


def verify_signature(
    header: str | None, body: bytes, secrets: list[bytes], tolerance_s: int, now: float | None = None
) -> None:
    """Accept when one `v1` matches one secret and `t` is within the tolerance; else raise SignatureError."""
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed {SIGNATURE_HEADER} header: expected t=<unix seconds>,v1=<hex>")
        if key == "t":
            # ASCII digits only: str.isdigit() is also true of "²" and other digits int() refuses (a 500)
            if not (value.isascii() and value.isdigit()) or len(value) > 12:
                raise SignatureError(f"malformed {SIGNATURE_HEADER} header: t must be unix seconds")
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value.lower())
        # other schemes (v0, future v2) are ignored, as Stripe does
    if timestamp is None or not candidates:
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header: expected t=<unix seconds>,v1=<hex>")
    skew = (time.time() if now is None else now) - timestamp
    if abs(skew) > tolerance_s:
        raise SignatureError(
            f"stale signature: timestamp is {abs(int(skew))}s {'old' if skew > 0 else 'in the future'}"
            f" (tolerance {tolerance_s}s)"
        )
    expected = [compute_signature(secret, timestamp, body) for secret in secrets]
    matched = False
    for candidate in candidates:
        for want in expected:
            # compare every pair (no early exit) so timing does not reveal which secret or candidate matched
            matched |= hmac.compare_digest(candidate.encode(), want.encode())
    if not matched:
        raise SignatureError("signature does not match the body with any active secret")
