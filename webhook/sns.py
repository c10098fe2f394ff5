"""Amazon SNS messages posted to the receiver (SES receipts, bounces and complaints): parsed strictly and verified
as AWS documents it (https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html).

A message is trusted only when every check passes, cheapest first, and nothing is fetched for a message that
fails one that needs no network: its fields (400), its topic (403), its signature version (403), its age (403),
where its certificate lives (403); then its signing certificate, fetched over the allowed schemes from an allowed
host only and cached by URL (403 when it is no usable certificate, 503 when it cannot be fetched now, so SNS
retries), and the signature itself (403). The trust in the certificate is the fetch: TLS to an AWS host, no
redirect followed; the certificate's own chain is not checked (SNS serves the leaf alone).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from webhook.settings import ReceiverSettings

logger = logging.getLogger("upsell.receiver")

MessageType = Literal["Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"]

#: The keys of the string to sign, in order, per message type (Subject only when the notification has one).
NOTIFICATION_KEYS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_KEYS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
#: SignatureVersion -> the hash of its RSA PKCS#1 v1.5 signature.
SIGNATURE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
#: The most of a signing certificate read (an SNS certificate PEM is about 2 KB), and of a confirmation answer.
CERT_MAX_BYTES = 64 * 1024
CONFIRM_MAX_BYTES = 64 * 1024
#: Certificates kept in memory (SNS rotates its certificate rarely; the URL names it).
CERT_CACHE_SIZE = 32


class SnsRejected(Exception):
    """A message refused: its status code, a reason code, a readable detail and the field at fault (if one)."""

    def __init__(self, status_code: int, reason: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.reason = reason
        self.detail = detail
        self.field = field


class SnsMessage(BaseModel):
    """The JSON document SNS posts (the keys AWS spells are the aliases; unknown keys are ignored)."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True, populate_by_name=True)

    type: MessageType = Field(alias="Type")
    message_id: str = Field(alias="MessageId", min_length=1, max_length=200)
    topic_arn: str = Field(alias="TopicArn", min_length=1, max_length=1024)
    subject: str | None = Field(default=None, alias="Subject", description="Notifications only, when one was set.")
    message: str = Field(alias="Message", description="For SES: the event as a JSON text.")
    timestamp: str = Field(alias="Timestamp", min_length=1, max_length=64, examples=["2026-04-26T20:45:04.751Z"])
    signature_version: str = Field(alias="SignatureVersion", max_length=8, examples=["2"])
    signature: str = Field(alias="Signature", min_length=1, max_length=4096, description="Base64.")
    signing_cert_url: str = Field(alias="SigningCertURL", min_length=1, max_length=2048)
    subscribe_url: str | None = Field(default=None, alias="SubscribeURL", max_length=2048)
    token: str | None = Field(default=None, alias="Token", max_length=2048)

    def fields(self) -> dict[str, str | None]:
        """Every field under the key AWS gives it."""
        return self.model_dump(by_alias=True)


def string_to_sign(fields: Mapping[str, str | None]) -> bytes:
    """The text SNS signs: "<key>\\n<value>\\n" for each key of the message's type, in order, UTF-8."""
    keys = NOTIFICATION_KEYS if fields["Type"] == "Notification" else CONFIRMATION_KEYS
    return "".join(f"{key}\n{fields[key]}\n" for key in keys if fields.get(key) is not None).encode()


def parse_message(body: bytes) -> SnsMessage:
    """The message, strictly: 400 for a body that is no JSON object or a field that is missing or not a string."""
    try:
        message = SnsMessage.model_validate_json(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(part) for part in error["loc"]) or "body"
        malformed = error["type"] in ("json_invalid", "json_type", "string_unicode", "model_type")
        raise SnsRejected(400, "malformed_json" if malformed else "invalid_field", f"{field}: {error['msg']}",
                          field=field) from None
    if message.type != "Notification":
        for key, value in (("SubscribeURL", message.subscribe_url), ("Token", message.token)):
            if not value:
                raise SnsRejected(400, "invalid_field", f"{key}: required in a {message.type}", field=key)
    return message


def parse_timestamp(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise SnsRejected(400, "invalid_field", "Timestamp: not an ISO 8601 time with a UTC offset",
                          field="Timestamp")
    return when


class SnsVerifier:
    """Verifies SNS messages against the receiver's allow-lists; keeps the signing certificates it fetched."""

    def __init__(self, settings: ReceiverSettings) -> None:
        self.settings = settings
        self._host = re.compile(settings.sns_cert_host_pattern)
        self._certs: dict[str, x509.Certificate] = {}

    def allowed_url(self, raw: str, field: str) -> httpx.URL:
        """`raw` parsed as httpx will fetch it, when its scheme is allowed and its host matches (else 403)."""
        try:
            url = httpx.URL(raw) if raw.isascii() and raw.isprintable() and "\\" not in raw else None
        except httpx.InvalidURL:
            url = None
        if url is None or url.scheme not in self.settings.sns_url_schemes or url.userinfo \
                or not self._host.fullmatch(url.host):
            raise SnsRejected(403, "url_not_allowed", f"{field}: {raw[:200]!r} is not an allowed "
                              f"{'/'.join(self.settings.sns_url_schemes)} URL of an SNS host", field=field)
        return url

    async def verify(self, body: bytes, *, header_type: str | None = None,
                     header_topic: str | None = None) -> SnsMessage:
        """The message, once every check passed; `SnsRejected` (nothing changed) at the first that fails."""
        message = parse_message(body)
        if header_type is not None and header_type != message.type:
            raise SnsRejected(400, "header_mismatch", f"x-amz-sns-message-type {header_type[:50]!r} is not the "
                              f"message's Type {message.type!r}", field="x-amz-sns-message-type")
        if header_topic is not None and header_topic != message.topic_arn:
            raise SnsRejected(400, "header_mismatch", "x-amz-sns-topic-arn is not the message's TopicArn",
                              field="x-amz-sns-topic-arn")
        if message.topic_arn not in self.settings.sns_topic_arns:
            raise SnsRejected(403, "topic_not_allowed", f"TopicArn {message.topic_arn[:200]!r} is not one this "
                              "receiver subscribes to", field="TopicArn")
        algorithm = SIGNATURE_HASHES.get(message.signature_version)
        if algorithm is None:
            raise SnsRejected(403, "unsupported_signature_version", f"SignatureVersion "
                              f"{message.signature_version!r} is not 1 or 2", field="SignatureVersion")
        self._check_age(parse_timestamp(message.timestamp))
        url = self.allowed_url(message.signing_cert_url, "SigningCertURL")
        key = (await self._certificate(url)).public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise SnsRejected(403, "certificate_invalid", "SigningCertURL: the certificate's key is not RSA",
                              field="SigningCertURL")
        try:
            signature = base64.b64decode(message.signature, validate=True)
            key.verify(signature, string_to_sign(message.fields()), padding.PKCS1v15(), algorithm())
        except (binascii.Error, InvalidSignature):
            raise SnsRejected(403, "invalid_signature", "Signature: does not sign this message with the "
                              "certificate at SigningCertURL", field="Signature") from None
        return message

    async def confirm_subscription(self, message: SnsMessage) -> None:
        """Confirm a verified SubscriptionConfirmation: GET its SubscribeURL (only an allowed URL of an SNS host).
        502 when SNS does not accept it: SNS then sends the confirmation again."""
        url = self.allowed_url(message.subscribe_url or "", "SubscribeURL")
        try:
            status, _ = await self._get(url, CONFIRM_MAX_BYTES)
        except (httpx.HTTPError, _TooLarge) as exc:
            status, reason = 0, f"{type(exc).__name__}: {exc}"
        else:
            reason = f"HTTP {status}"
        if status != 200:
            raise SnsRejected(502, "confirmation_failed", f"SubscribeURL: the confirmation was not accepted "
                              f"({reason})", field="SubscribeURL")
        logger.info("SNS subscription to %s confirmed", message.topic_arn)

    def _check_age(self, sent: datetime) -> None:
        age = (datetime.now(UTC) - sent).total_seconds()
        if age > self.settings.sns_max_age_s:
            raise SnsRejected(403, "stale_message", f"Timestamp: the message is {age:.0f} s old; the limit is "
                              f"{self.settings.sns_max_age_s:g} s", field="Timestamp")
        if -age > self.settings.sns_clock_skew_s:
            raise SnsRejected(403, "stale_message", f"Timestamp: the message is {-age:.0f} s in the future",
                              field="Timestamp")

    async def _certificate(self, url: httpx.URL) -> x509.Certificate:
        """The certificate at `url` (fetched once, then from memory), still valid now."""
        cert = self._certs.get(str(url))
        if cert is None:
            cert = await self._fetch_certificate(url)
            if len(self._certs) >= CERT_CACHE_SIZE:
                del self._certs[next(iter(self._certs))]
            self._certs[str(url)] = cert
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise SnsRejected(403, "certificate_invalid", "SigningCertURL: the certificate is not valid now",
                              field="SigningCertURL")
        return cert

    async def _fetch_certificate(self, url: httpx.URL) -> x509.Certificate:
        try:
            status, pem = await self._get(url, CERT_MAX_BYTES)
        except _TooLarge:
            raise SnsRejected(403, "certificate_invalid", "SigningCertURL: the answer is too large for a "
                              "certificate", field="SigningCertURL") from None
        except httpx.HTTPError as exc:  # AWS is not reachable now: a 5xx, so SNS delivers the message again
            logger.warning("SNS signing certificate %s could not be fetched: %s: %s", url, type(exc).__name__, exc)
            raise SnsRejected(503, "certificate_unavailable", "SigningCertURL: the certificate could not be "
                              "fetched now", field="SigningCertURL") from None
        if status >= 500:
            raise SnsRejected(503, "certificate_unavailable", f"SigningCertURL: HTTP {status} when fetching the "
                              "certificate", field="SigningCertURL")
        if status != 200:
            raise SnsRejected(403, "certificate_invalid", f"SigningCertURL: HTTP {status} when fetching the "
                              "certificate", field="SigningCertURL")
        try:
            return x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise SnsRejected(403, "certificate_invalid", "SigningCertURL: the answer is not a PEM certificate",
                              field="SigningCertURL") from None

    async def _get(self, url: httpx.URL, limit: int) -> tuple[int, bytes]:
        """GET `url` (no redirect followed, short timeout): its status and at most `limit` bytes of its body."""
        async with httpx.AsyncClient(timeout=self.settings.sns_fetch_timeout_s, follow_redirects=False) as client:
            async with client.stream("GET", url) as response:
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise _TooLarge(f"more than {limit} bytes")
                    chunks.append(chunk)
                return response.status_code, b"".join(chunks)


class _TooLarge(Exception):
    """An answer longer than the most that is read of it."""
