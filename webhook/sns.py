"""Amazon SNS messages posted to the receiver (SES receipts, bounces and complaints): parsed strictly and verified
as AWS documents it (https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html).

A message is trusted only when every check passes, cheapest first, and nothing is fetched for a message that
fails one that needs no network: its fields (400), its topic (403), its signature version (403: 2 only, unless
UPSELL_SNS_ALLOW_SIGNATURE_V1), its age (403), where its certificate lives (403: https://sns.<region>.amazonaws.com
on port 443, a .pem path, nothing else); then its signing certificate, fetched from there, no redirect followed,
and cached by URL (403 when it is no usable certificate, 503 when it cannot be fetched now, so SNS retries), its
chain verified against the system trust store and its name checked (sns.amazonaws.com, or the host it came
from), and the signature itself (403). SNS serves the certificate alone: its issuer is fetched from the address
the certificate names (Authority Information Access), and trusted only through the chain to a root of the store.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import re
import ssl
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
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
#: The name SNS's signing certificates are issued to (the host the certificate came from is accepted too).
SNS_CERT_NAME = "sns.amazonaws.com"


def load_trust_store(path: Path | None) -> Store:
    """The CAs a signing certificate must chain to: the PEM file `path`, or the system's trust store."""
    if path is None:
        paths = ssl.get_default_verify_paths()
        path = Path(paths.cafile or paths.openssl_cafile)
    certificates = []
    for block in re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", path.read_bytes(), re.S):
        with warnings.catch_warnings():  # a system bundle holds a few old roots that bend RFC 5280 (serials)
            warnings.simplefilter("ignore")
            try:
                certificates.append(x509.load_pem_x509_certificate(block))
            except ValueError:  # one root cryptography cannot read does not take the others with it
                continue
    if not certificates:
        raise RuntimeError(f"no CA certificate in {path}: SNS signing certificates cannot be verified")
    return Store(certificates)


def issuer_url(cert: x509.Certificate) -> str | None:
    """Where the certificate's issuer can be fetched (its Authority Information Access caIssuers), if it says."""
    try:
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for description in access:
        if description.access_method == AuthorityInformationAccessOID.CA_ISSUERS \
                and isinstance(description.access_location, x509.UniformResourceIdentifier):
            return description.access_location.value
    return None


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM file, or the one of a DER file (how CAs publish their issuer certificates)."""
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


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
        self._store: Store | None = None
        self._versions = SIGNATURE_HASHES if settings.sns_allow_signature_v1 else {"2": hashes.SHA256}

    def allowed_url(self, raw: str, field: str) -> httpx.URL:
        """`raw` parsed as httpx will fetch it, when it is an SNS URL of its kind (else 403): an allowed scheme,
        an allowed host, port 443 (any with http, which only tests allow), no user info, no fragment; a
        SigningCertURL a .pem path without query, a SubscribeURL the path / with Action=ConfirmSubscription."""
        try:
            url = httpx.URL(raw) if raw.isascii() and raw.isprintable() and "\\" not in raw else None
        except httpx.InvalidURL:
            url = None
        if url is None or url.scheme not in self.settings.sns_url_schemes or url.userinfo or url.fragment \
                or not self._host.fullmatch(url.host) or (url.scheme == "https" and url.port not in (None, 443)):
            url = None
        elif field == "SigningCertURL":
            url = url if url.path.endswith(".pem") and not url.query else None
        else:
            url = url if url.path == "/" and url.params.get("Action") == "ConfirmSubscription" else None
        if url is None:
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
        algorithm = self._versions.get(message.signature_version)
        if algorithm is None:
            raise SnsRejected(403, "unsupported_signature_version", f"SignatureVersion "
                              f"{message.signature_version!r} is not {' or '.join(self._versions)}",
                              field="SignatureVersion")
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
        """The certificate at `url`, once its chain and name are verified."""
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
            leaf, *intermediates = x509.load_pem_x509_certificates(pem)
        except ValueError:
            raise SnsRejected(403, "certificate_invalid", "SigningCertURL: the answer is not a PEM certificate",
                              field="SigningCertURL") from None
        if not intermediates and (issuer := issuer_url(leaf)) is not None:
            intermediates = await self._fetch_issuer(issuer)
        self._verify_chain(leaf, intermediates, url.host)
        return leaf

    async def _fetch_issuer(self, raw: str) -> list[x509.Certificate]:
        """The issuer of a certificate SNS served alone, from the address the certificate names; [] when it cannot
        be had (the chain then does not verify). What it is worth is decided by the chain, not by where it was."""
        try:
            url = httpx.URL(raw)
            if url.scheme not in ("http", "https"):
                return []
            status, data = await self._get(url, CERT_MAX_BYTES)
            return load_certificates(data) if status == 200 else []
        except (httpx.HTTPError, httpx.InvalidURL, _TooLarge, ValueError) as exc:
            logger.warning("SNS: the issuer certificate at %s could not be fetched: %s: %s", raw[:200],
                           type(exc).__name__, exc)
            return []

    def _verify_chain(self, leaf: x509.Certificate, intermediates: list[x509.Certificate], host: str) -> None:
        """403 unless `leaf` chains to the trust store and is issued to sns.amazonaws.com (or `host`)."""
        if self._store is None:
            self._store = load_trust_store(self.settings.sns_trust_store)
        names = [SNS_CERT_NAME] + ([host] if host != SNS_CERT_NAME and not _is_ip(host) else [])
        errors = []
        for name in names:
            verifier = PolicyBuilder().store(self._store).build_server_verifier(x509.DNSName(name))
            try:
                verifier.verify(leaf, intermediates)
                return
            except VerificationError as exc:
                errors.append(f"{name}: {exc}")
        logger.warning("SNS signing certificate refused: %s", "; ".join(errors))
        raise SnsRejected(403, "certificate_untrusted", f"SigningCertURL: the certificate does not chain to a "
                          f"trusted CA or is not issued to {' or '.join(names)}", field="SigningCertURL")

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


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _TooLarge(Exception):
    """An answer longer than the most that is read of it."""
