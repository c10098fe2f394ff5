"""Amazon SNS for the tests: a fake that signs messages as SNS does and serves what the receiver fetches, and
builders of the SES events SNS carries (emails received, bounces, complaints).

`FakeSns` makes a test root CA, an intermediate CA and a signing certificate the intermediate issued (to
sns.amazonaws.com, as SNS's own, naming where its issuer is: Authority Information Access), serves the
certificate's PEM alone at `/certs/<name>` (any name: a test that counts fetches uses a name of its own), the
intermediate at `/ca/intermediate.cer` (DER, as Amazon's CAs publish it), writes the root to `fake.trust_store`
(a receiver trusts the fake with `sns_trust_store=fake.trust_store`, tests only) and serves a SubscribeURL
endpoint (`/?Action=ConfirmSubscription&TopicArn=…&Token=…`, answered as SNS answers) that records every
confirmation. `fake.sign_message(message, version)` adds SignatureVersion, SigningCertURL and Signature.

The string to sign is built here from the AWS documentation on its own, not with `webhook.sns`, so a mistake
there is not repeated here and hidden.
"""

from __future__ import annotations

import base64
import json
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlencode

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from tests.fakes.control import FakeControl

REGION = "us-east-1"
ACCOUNT = "123456789012"
TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:upsell-inbound"
SNS_CONTENT_TYPE = "text/plain; charset=UTF-8"
SignatureVersion = Literal[1, 2, "1", "2"]

_NOTIFICATION_KEYS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_KEYS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")


# ---- certificates and signatures ----


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Upsell tests")])


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                         encipher_only=False, decipher_only=False)


def make_ca(issuer: tuple[rsa.RSAPrivateKey, x509.Certificate] | None = None,
            valid_for: timedelta = timedelta(days=1)) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A test root CA (`issuer` None) or an intermediate CA issued by `issuer`: (its key, its certificate)."""
    now = datetime.now(UTC)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = _name("Upsell test intermediate CA" if issuer else "Upsell test root CA")
    signer_key, issuer_name = (issuer[0], issuer[1].subject) if issuer else (key, name)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0 if issuer else 1), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[0].public_key()), critical=False)
    return key, builder.sign(signer_key, hashes.SHA256())


def make_signing_certificate(issuer: tuple[rsa.RSAPrivateKey, x509.Certificate], issuer_url: str | None,
                             dns_name: str = "sns.amazonaws.com",
                             valid_for: timedelta = timedelta(days=1)) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A signing certificate as SNS's (issued to `dns_name`, its issuer at `issuer_url`): (its key, itself)."""
    now = datetime.now(UTC)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    builder = (
        x509.CertificateBuilder().subject_name(_name(dns_name)).issuer_name(issuer[1].subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[0].public_key()), critical=False)
    )
    if issuer_url:
        builder = builder.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(issuer_url))]), critical=False)
    return key, builder.sign(issuer[0], hashes.SHA256())


def string_to_sign(message: dict[str, Any]) -> bytes:
    """What SNS signs: "<key>\\n<value>\\n" for the keys of the message's type, in order (Subject only if present)."""
    keys = _NOTIFICATION_KEYS if message["Type"] == "Notification" else _CONFIRMATION_KEYS
    return "".join(f"{key}\n{message[key]}\n" for key in keys if key in message).encode()


def sign_with(key: rsa.RSAPrivateKey, message: dict[str, Any], version: SignatureVersion,
              cert_url: str) -> dict[str, Any]:
    """`message` with SignatureVersion, SigningCertURL and its Signature (RSA PKCS#1 v1.5, SHA1 for 1, SHA256
    for 2), as SNS posts it."""
    algorithm: hashes.HashAlgorithm = hashes.SHA1() if str(version) == "1" else hashes.SHA256()
    signed = {**message, "SignatureVersion": str(version), "SigningCertURL": cert_url}
    signature = key.sign(string_to_sign(signed), padding.PKCS1v15(), algorithm)
    return {**signed, "Signature": base64.b64encode(signature).decode()}


# ---- SNS messages ----


def sns_timestamp(when: datetime | None = None) -> str:
    """A time as SNS writes it: 2026-04-26T20:45:04.751Z."""
    when = (when or datetime.now(UTC)).astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def sns_notification(message: str | dict[str, Any], *, topic_arn: str = TOPIC_ARN, subject: str | None = None,
                     message_id: str | None = None, timestamp: str | None = None) -> dict[str, Any]:
    """An unsigned Notification carrying `message` (a dict becomes its JSON text, as SES's events are)."""
    body = {
        "Type": "Notification",
        "MessageId": message_id or str(uuid.uuid4()),
        "TopicArn": topic_arn,
        "Message": message if isinstance(message, str) else json.dumps(message),
        "Timestamp": timestamp or sns_timestamp(),
        "UnsubscribeURL": f"https://sns.{REGION}.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={topic_arn}:sub",
    }
    if subject is not None:
        body["Subject"] = subject
    return body


def sns_confirmation(subscribe_url: str, *, topic_arn: str = TOPIC_ARN, token: str | None = None,
                     kind: Literal["SubscriptionConfirmation", "UnsubscribeConfirmation"] = "SubscriptionConfirmation",
                     timestamp: str | None = None) -> dict[str, Any]:
    """An unsigned SubscriptionConfirmation (or UnsubscribeConfirmation) whose SubscribeURL is `subscribe_url`."""
    verb = "subscribe" if kind == "SubscriptionConfirmation" else "unsubscribe"
    return {
        "Type": kind,
        "MessageId": str(uuid.uuid4()),
        "Token": token or uuid.uuid4().hex * 4,
        "TopicArn": topic_arn,
        "Message": f"You have chosen to {verb} the topic {topic_arn}.\nTo confirm the subscription, visit the"
                   " SubscribeURL included in this message.",
        "SubscribeURL": subscribe_url,
        "Timestamp": timestamp or sns_timestamp(),
    }


def sns_headers(message: dict[str, Any]) -> dict[str, str]:
    """The headers SNS posts a message with."""
    headers = {
        "content-type": SNS_CONTENT_TYPE,
        "x-amz-sns-message-type": message["Type"],
        "x-amz-sns-message-id": message["MessageId"],
        "x-amz-sns-topic-arn": message["TopicArn"],
        "user-agent": "Amazon Simple Notification Service Agent",
    }
    if message["Type"] == "Notification":
        headers["x-amz-sns-subscription-arn"] = f"{message['TopicArn']}:{uuid.uuid4()}"
    return headers


def post_sns(client: httpx.Client, message: dict[str, Any] | bytes, path: str = "/inbound/ses",
             headers: dict[str, str] | None = None) -> httpx.Response:
    """POST a message as SNS does (its JSON as text/plain with the x-amz-sns-* headers)."""
    if isinstance(message, bytes):
        return client.post(path, content=message, headers=headers or {"content-type": SNS_CONTENT_TYPE})
    return client.post(path, content=json.dumps(message).encode(), headers=headers or sns_headers(message))


# ---- SES events (the Message of a notification) ----


def raw_email(*, sender: str = "Pat Customer <pat@customer.example>", to: str = "upsell@reply.example.com",
              subject: str = "Re: Your plan", text: str = "Yes, let's talk.", in_reply_to: str | None = None,
              message_id: str | None = None, dkim_domain: str | None = None) -> bytes:
    """An email as SES receives it (RFC 5322, CRLF line ends); `in_reply_to` threads it under a sent email;
    `dkim_domain` adds a DKIM-Signature header of that signing domain (d=)."""
    msg = EmailMessage()
    if dkim_domain:
        msg["DKIM-Signature"] = f"v=1; a=rsa-sha256; c=relaxed/relaxed; d={dkim_domain}; s=s1; h=from:to; b=AAAA"
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = message_id or make_msgid(domain="customer.example")
    if in_reply_to:
        msg["In-Reply-To"] = msg["References"] = in_reply_to
    msg.set_content(text)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def ses_mail(*, source: str = "pat@customer.example", destination: list[str] | None = None,
             message_id: str | None = None, subject: str = "Re: Your plan",
             headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The `mail` object of an SES event: the email's SES message id, envelope and headers."""
    destination = destination or ["upsell@reply.example.com"]
    header_values = {"From": source, "To": ", ".join(destination), "Subject": subject,
                     "Message-ID": f"<{uuid.uuid4().hex}@customer.example>", **(headers or {})}
    return {
        "timestamp": sns_timestamp(),
        "source": source,
        "messageId": message_id or uuid.uuid4().hex[:20],
        "destination": destination,
        "headersTruncated": False,
        "headers": [{"name": name, "value": value} for name, value in header_values.items()],
        "commonHeaders": {"from": [source], "to": destination, "subject": subject,
                          "messageId": header_values["Message-ID"]},
    }


def _verdicts(overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """SES's verdicts on a received email, all PASS but for `overrides` (`{"spf": "FAIL", "dmarc": "GRAY"}`)."""
    names = ("spam", "virus", "spf", "dkim", "dmarc")
    return {f"{name}Verdict": {"status": (overrides or {}).get(name, "PASS")} for name in names}


def ses_received(email: bytes, *, encoding: Literal["UTF8", "BASE64"] = "UTF8", recipients: list[str] | None = None,
                 topic_arn: str = TOPIC_ARN, mail: dict[str, Any] | None = None,
                 verdicts: dict[str, str] | None = None) -> dict[str, Any]:
    """An SES "Received" event of a receipt rule's SNS action: the raw email in `content` (top level, as AWS
    documents it), as text (UTF8) or base64 (BASE64)."""
    recipients = recipients or ["upsell@reply.example.com"]
    content = email.decode("utf-8", "replace") if encoding == "UTF8" else base64.b64encode(email).decode()
    return {
        "notificationType": "Received",
        "mail": mail or ses_mail(destination=recipients),
        "receipt": {
            "timestamp": sns_timestamp(), "processingTimeMillis": 120, "recipients": recipients,
            **_verdicts(verdicts),
            "action": {"type": "SNS", "topicArn": topic_arn, "encoding": encoding},
        },
        "content": content,
    }


def ses_received_in_s3(bucket: str, key: str, *, recipients: list[str] | None = None,
                       topic_arn: str = TOPIC_ARN, mail: dict[str, Any] | None = None) -> dict[str, Any]:
    """An SES "Received" event of a receipt rule's S3 action: the email is in the bucket, not in the event."""
    recipients = recipients or ["upsell@reply.example.com"]
    return {
        "notificationType": "Received",
        "mail": mail or ses_mail(destination=recipients),
        "receipt": {
            "timestamp": sns_timestamp(), "processingTimeMillis": 150, "recipients": recipients, **_verdicts(),
            "action": {"type": "S3", "topicArn": topic_arn, "bucketName": bucket, "objectKeyPrefix": "",
                       "objectKey": key},
        },
    }


def ses_bounce(recipients: list[str], *, bounce_type: Literal["Permanent", "Transient", "Undetermined"] = "Permanent",
               sub_type: str = "General", mail_message_id: str | None = None) -> dict[str, Any]:
    """An SES "Bounce" event of an email the upsell sent (`mail_message_id`: the id SES gave it when sent)."""
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": sub_type,
            "bouncedRecipients": [{"emailAddress": address, "action": "failed", "status": "5.1.1",
                                   "diagnosticCode": "smtp; 550 5.1.1 user unknown"} for address in recipients],
            "timestamp": sns_timestamp(),
            "feedbackId": f"{uuid.uuid4().hex}-000000",
            "reportingMTA": "dsn; a1-2.smtp-out.amazonses.com",
        },
        "mail": ses_mail(source="growth@upsell.example.com", destination=recipients, message_id=mail_message_id,
                         subject="A plan for your growth"),
    }


def ses_complaint(recipients: list[str], *, feedback_type: str = "abuse",
                  mail_message_id: str | None = None) -> dict[str, Any]:
    """An SES "Complaint" event (a recipient marked the upsell's email as spam)."""
    return {
        "notificationType": "Complaint",
        "complaint": {
            "userAgent": "Mozilla/5.0 (compatible; feedback-loop)",
            "complainedRecipients": [{"emailAddress": address} for address in recipients],
            "complaintFeedbackType": feedback_type,
            "arrivalDate": sns_timestamp(),
            "timestamp": sns_timestamp(),
            "feedbackId": f"{uuid.uuid4().hex}-000000",
        },
        "mail": ses_mail(source="growth@upsell.example.com", destination=recipients, message_id=mail_message_id,
                         subject="A plan for your growth"),
    }


# ---- the fake ----


class FakeSns(FakeControl):
    """Control object and app of the fake SNS: signing certificates at `/certs/<name>`, the SubscribeURL at `/`.

    `fail_next(status)` makes the next certificate fetch or confirmation answer that status; `malformed_next()`
    makes the next certificate answer something that is no PEM.
    """

    def __init__(self) -> None:
        super().__init__()
        self.root = make_ca()
        self.intermediate = make_ca(self.root)
        self.trust_store = Path(tempfile.mkdtemp(prefix="fake-sns-")) / "root.pem"
        self.trust_store.write_bytes(self.root[1].public_bytes(serialization.Encoding.PEM))
        self.served: dict[str, bytes] = {}  # certificates served under a name of their own (`serve_certificate`)
        self.app = self._build_app()

    def start(self) -> Self:
        """Serve the fake; its signing certificate names the fake's own address for its issuer."""
        super().start()
        self.key, self.certificate = make_signing_certificate(self.intermediate, self.issuer_url())
        self.pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        return self

    def issuer_url(self) -> str:
        return f"{self.base_url}/ca/intermediate.cer"

    def serve_certificate(self, name: str, certificate: x509.Certificate,
                          chain: list[x509.Certificate] | None = None) -> str:
        """Serve `certificate` (and `chain` after it) at `/certs/<name>`: its URL."""
        self.served[name] = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [certificate, *(chain or [])])
        return self.cert_url(name)

    def cert_url(self, name: str = "SimpleNotificationService-fake.pem") -> str:
        return f"{self.base_url}/certs/{name}"

    def subscribe_url(self, topic_arn: str = TOPIC_ARN, token: str = "") -> str:
        return f"{self.base_url}/?" + urlencode({"Action": "ConfirmSubscription", "TopicArn": topic_arn,
                                                   "Token": token})

    def sign_message(self, message: dict[str, Any], version: SignatureVersion = 2,
                     cert_url: str | None = None) -> dict[str, Any]:
        """`message` signed with the fake's key; its SigningCertURL is `cert_url` or the fake's own."""
        return sign_with(self.key, message, version, cert_url or self.cert_url())

    def confirmation(self, topic_arn: str = TOPIC_ARN, *, version: SignatureVersion = 2,
                     kind: Literal["SubscriptionConfirmation", "UnsubscribeConfirmation"] = "SubscriptionConfirmation",
                     subscribe_url: str | None = None) -> dict[str, Any]:
        """A signed confirmation whose SubscribeURL is the fake's (with the message's own token)."""
        token = uuid.uuid4().hex * 4
        url = subscribe_url or self.subscribe_url(topic_arn, token)
        return self.sign_message(sns_confirmation(url, topic_arn=topic_arn, token=token, kind=kind), version)

    def cert_fetches(self, name: str | None = None) -> int:
        """How many times a certificate (the one called `name`, or any) was fetched."""
        return len([r for r in self.requests_to("") if r.path.startswith("/certs/")
                    and (name is None or r.path == f"/certs/{name}")])

    def confirmations(self, token: str | None = None) -> list[dict[str, str]]:
        """The ConfirmSubscription calls received (their query), those of `token` only when given."""
        return [r.query for r in self.requests_to("/") if r.query.get("Action") == "ConfirmSubscription"
                and (token is None or r.query.get("Token") == token)]

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/certs/{name}")
        async def certificate(name: str, request: Request) -> Response:
            self.record("GET", request.url.path, dict(request.headers), dict(request.query_params), None)
            fault = self.take_fault()
            if fault is not None and fault.kind == "malformed":
                return PlainTextResponse("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
            if fault is not None:
                return PlainTextResponse("fake error", status_code=fault.status)
            return Response(self.served.get(name, self.pem), media_type="application/x-x509-ca-cert")

        @app.get("/ca/intermediate.cer")
        async def intermediate(request: Request) -> Response:
            self.record("GET", request.url.path, dict(request.headers), {}, None)
            return Response(self.intermediate[1].public_bytes(serialization.Encoding.DER),
                            media_type="application/pkix-cert")

        @app.get("/")
        async def confirm(request: Request) -> Response:
            query = dict(request.query_params)
            self.record("GET", request.url.path, dict(request.headers), query, None)
            fault = self.take_fault()
            if fault is not None:
                return PlainTextResponse("<ErrorResponse/>", status_code=fault.status, media_type="text/xml")
            subscription = f"{query.get('TopicArn', '')}:{uuid.uuid4()}"
            return PlainTextResponse(
                '<ConfirmSubscriptionResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
                f"<ConfirmSubscriptionResult><SubscriptionArn>{subscription}</SubscriptionArn>"
                "</ConfirmSubscriptionResult><ResponseMetadata><RequestId>"
                f"{uuid.uuid4()}</RequestId></ResponseMetadata></ConfirmSubscriptionResponse>",
                media_type="text/xml",
            )

        return app
