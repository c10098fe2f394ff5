"""`POST /inbound/ses` under uvicorn against the session Prefect server, with a fake SNS that signs as SNS does
and serves its certificate and SubscribeURL: verified notifications are kept once per MessageId and answered
202; anything unsigned, forged, stale, of another topic or with a certificate from elsewhere is a 4xx that keeps
nothing and, when the check needs no network, fetches nothing."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from tests.fakes.sns import (
    TOPIC_ARN,
    FakeSns,
    make_ca,
    make_signing_certificate,
    post_sns,
    raw_email,
    ses_bounce,
    ses_complaint,
    ses_received,
    ses_received_in_s3,
    sign_with,
    sns_notification,
    sns_timestamp,
)
from tests.test_webhook_support import SECRET
from webhook.serve import ReceiverThread
from webhook.settings import ReceiverSettings
from webhook.sns import SnsRejected, SnsVerifier, string_to_sign
from webhook.store import ReceiverStore

OTHER_TOPIC = "arn:aws:sns:us-east-1:123456789012:someone-elses-topic"


def _settings(tmp: Path, api_url: str, **fields: Any) -> ReceiverSettings:
    return ReceiverSettings(webhook_secrets=[SECRET], data_dir=tmp, receiver_db=tmp / "receiver.db",
                            prefect_api_url=api_url, **fields)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeSns]:
    sns = FakeSns().start()
    yield sns
    sns.stop()


class Receiver:
    """A running receiver, a client of it and its SQLite file."""

    def __init__(self, thread: ReceiverThread, http: httpx.Client) -> None:
        self.thread, self.http = thread, http
        self.db = thread.settings.receiver_db_path

    def rows(self, message_id: str) -> list[dict[str, Any]]:
        with sqlite3.connect(self.db) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM inbound WHERE message_id=?", (message_id,))]

    def count(self) -> int:
        with sqlite3.connect(self.db) as db:
            return int(db.execute("SELECT COUNT(*) FROM inbound").fetchone()[0])


def _receiver(settings: ReceiverSettings) -> Iterator[Receiver]:
    with ReceiverThread(settings) as thread, httpx.Client(base_url=thread.url, timeout=30) as http:
        yield Receiver(thread, http)


#: The bucket the test receiver allows SES to have stored an email in.
BUCKET = "inbound-mail"


def _fake_settings(tmp: Path, api_url: str, fake: FakeSns, **fields: Any) -> ReceiverSettings:
    """Subscribed to TOPIC_ARN; certificates over http from 127.0.0.1 only (where the fake runs), trusted when they
    chain to the fake's root CA (the tests-only overrides)."""
    return _settings(tmp, api_url, **{
        "sns_topic_arns": [TOPIC_ARN], "sns_cert_host_pattern": r"127\.0\.0\.1", "sns_url_schemes": ["http"],
        "sns_trust_store": fake.trust_store, "inbound_s3_buckets": [BUCKET], **fields})


@pytest.fixture(scope="module")
def receiver(prefect_server: str, tmp_path_factory: pytest.TempPathFactory, fake: FakeSns) -> Iterator[Receiver]:
    """The fake's messages trusted (SignatureVersion 2 only, as by default)."""
    yield from _receiver(_fake_settings(tmp_path_factory.mktemp("inbound"), prefect_server, fake))


@pytest.fixture(scope="module")
def aws_only(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    """Subscribed to TOPIC_ARN with the default URL rules: https from sns.<region>.amazonaws.com only."""
    yield from _receiver(_settings(tmp_path_factory.mktemp("inbound-aws"), prefect_server,
                                   sns_topic_arns=[TOPIC_ARN]))


def _cert_name() -> str:
    return f"SimpleNotificationService-{uuid.uuid4().hex}.pem"


# ---- verified notifications are kept once ----


@pytest.mark.parametrize("version, event", [
    (2, "received_utf8"), (2, "received_base64"), (2, "received_s3"), (2, "bounce"), (2, "complaint")])
def test_signed_notification_is_kept_once(receiver, fake, version, event):
    ses_event = {
        "received_utf8": lambda: ses_received(raw_email(text="Yes — let's talk, ünïcode too.")),
        "received_base64": lambda: ses_received(raw_email(), encoding="BASE64"),
        "received_s3": lambda: ses_received_in_s3(BUCKET, f"emails/{uuid.uuid4().hex}"),
        "bounce": lambda: ses_bounce(["gone@customer.example"], bounce_type="Permanent"),
        "complaint": lambda: ses_complaint(["angry@customer.example"]),
    }[event]()
    name = _cert_name()
    message = fake.sign_message(sns_notification(ses_event, subject="Amazon SES Email Receipt Notification"
                                                 if event.startswith("received") else None),
                                version, fake.cert_url(name))

    first = post_sns(receiver.http, message)
    assert first.status_code == 202, first.text
    assert first.json() == {"message_id": message["MessageId"], "type": "Notification", "status": "received",
                            "duplicate": False}
    [row] = receiver.rows(message["MessageId"])  # the receiver's worker may be working it already
    assert row["topic_arn"] == TOPIC_ARN
    assert json.loads(row["message"]) == ses_event and row["sent_at"] == message["Timestamp"]
    kept = {k: row[k] for k in ("message_id", "topic_arn", "message", "sent_at", "received_at")}

    again = post_sns(receiver.http, message)  # SNS delivering it again (it got no answer in time, say)
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "duplicate" and again.json()["duplicate"] is True
    assert [{k: r[k] for k in kept} for r in receiver.rows(message["MessageId"])] == [kept]
    assert fake.cert_fetches(name) == 1  # the certificate is kept in memory by URL


def test_a_new_notification_wakes_the_inbound_worker(receiver, fake):
    woken: list[int] = []
    app = receiver.thread.server.config.app
    app.state.inbound_wake = lambda: woken.append(1)
    try:
        message = fake.sign_message(sns_notification(ses_complaint(["x@customer.example"])))
        assert post_sns(receiver.http, message).status_code == 202
        assert post_sns(receiver.http, message).status_code == 200
    finally:
        del app.state.inbound_wake
    assert woken == [1]  # once: a repeat has nothing new to process


# ---- refused: nothing kept, nothing fetched that needs not be ----


def _forged(fake: FakeSns, message: dict[str, Any]) -> dict[str, Any]:
    signed = fake.sign_message(message)
    text = signed["Message"]
    return {**signed, "Message": text[:10] + chr(ord(text[10]) ^ 1) + text[11:]}  # one byte changed


REFUSALS = {
    # case: (how the signed message is spoiled, status, error, whether the certificate may have been fetched)
    "unsigned": (lambda fake, m, name: m, 400, "invalid_field", False),
    "forged": (lambda fake, m, name: _forged(fake, m) | {"SigningCertURL": fake.cert_url(name)}, 403,
               "invalid_signature", True),
    "signature_of_another_message": (
        lambda fake, m, name: fake.sign_message(m, 2, fake.cert_url(name))
        | {"Signature": fake.sign_message({**m, "MessageId": "other"})["Signature"]}, 403, "invalid_signature", True),
    "version_1_label_on_a_sha256_signature": (
        lambda fake, m, name: fake.sign_message(m, 2, fake.cert_url(name)) | {"SignatureVersion": "1"}, 403,
        "unsupported_signature_version", False),
    "signature_version_1_by_default": (lambda fake, m, name: fake.sign_message(m, 1, fake.cert_url(name)), 403,
                                       "unsupported_signature_version", False),
    "signature_version_3": (lambda fake, m, name: fake.sign_message(m, 2, fake.cert_url(name))
                            | {"SignatureVersion": "3"}, 403, "unsupported_signature_version", False),
    "signature_not_base64": (lambda fake, m, name: fake.sign_message(m, 2, fake.cert_url(name))
                             | {"Signature": "not base64!"}, 403, "invalid_signature", True),
    "cert_on_another_host": (lambda fake, m, name: fake.sign_message(
        m, 2, fake.cert_url(name).replace("127.0.0.1", "localhost")), 403, "url_not_allowed", False),
    "cert_url_with_userinfo": (lambda fake, m, name: fake.sign_message(
        m, 2, fake.cert_url(name).replace("//", "//sns.us-east-1.amazonaws.com@")), 403, "url_not_allowed", False),
    "stale": (lambda fake, m, name: fake.sign_message(
        m | {"Timestamp": sns_timestamp(datetime.now(UTC) - timedelta(hours=1, minutes=1))}, 2, fake.cert_url(name)),
        403, "stale_message", False),
    "future": (lambda fake, m, name: fake.sign_message(
        m | {"Timestamp": sns_timestamp(datetime.now(UTC) + timedelta(minutes=10))}, 2, fake.cert_url(name)),
        403, "stale_message", False),
    "other_topic": (lambda fake, m, name: fake.sign_message(m | {"TopicArn": OTHER_TOPIC}, 2, fake.cert_url(name)),
                    403, "topic_not_allowed", False),
    "type_unknown": (lambda fake, m, name: fake.sign_message(m | {"Type": "Surprise"}, 2, fake.cert_url(name)),
                     400, "invalid_field", False),
    "timestamp_not_a_time": (lambda fake, m, name: fake.sign_message(
        m | {"Timestamp": "yesterday"}, 2, fake.cert_url(name)), 400, "invalid_field", False),
    "message_not_a_string": (lambda fake, m, name: fake.sign_message(m, 2, fake.cert_url(name))
                             | {"Message": {"notificationType": "Bounce"}}, 400, "invalid_field", False),
}


def test_an_email_in_a_bucket_not_allowed_is_refused(receiver, fake):
    message = fake.sign_message(sns_notification(ses_received_in_s3("someone-elses-bucket", "emails/x")))
    response = post_sns(receiver.http, message)
    assert response.status_code == 403 and response.json()["error"] == "bucket_not_allowed", response.text
    assert receiver.rows(message["MessageId"]) == []


def test_signature_version_1_only_when_allowed(prefect_server, tmp_path, fake):
    message = fake.sign_message(sns_notification(ses_bounce(["v1@customer.example"])), 1)
    for receiver in _receiver(_fake_settings(tmp_path, prefect_server, fake, sns_allow_signature_v1=True)):
        assert post_sns(receiver.http, message).status_code == 202
        assert len(receiver.rows(message["MessageId"])) == 1


def test_the_certificate_must_chain_to_a_trusted_ca_and_be_sns(receiver, fake, prefect_server, tmp_path):
    """A certificate of the fake's own CAs for another name, one of a CA nobody trusts, one whose issuer cannot
    be fetched, and the fake's good one when the receiver trusts only the system's CAs: 403, nothing kept."""
    stranger_ca = make_ca()
    cases = {
        "another_name": make_signing_certificate(fake.intermediate, fake.issuer_url(), dns_name="evil.example"),
        "untrusted_ca": make_signing_certificate(make_ca(stranger_ca), None, dns_name="sns.amazonaws.com"),
        "issuer_unreachable": make_signing_certificate(fake.intermediate, "http://127.0.0.1:9/ca.cer"),
        "self_signed_root_as_chain": make_signing_certificate(stranger_ca, None),
    }
    for case, (key, certificate) in cases.items():
        url = fake.serve_certificate(_cert_name(), certificate)
        message = sign_with(key, sns_notification(ses_bounce(["h@customer.example"])), 2, url)
        response = post_sns(receiver.http, message)
        assert response.status_code == 403 and response.json()["error"] == "certificate_untrusted", (case,
                                                                                                     response.text)
        assert receiver.rows(message["MessageId"]) == []
    # the intermediate sent along with the certificate (not fetched) is used as well
    url = fake.serve_certificate(_cert_name(), fake.certificate, [fake.intermediate[1]])
    message = fake.sign_message(sns_notification(ses_bounce(["i@customer.example"])), 2, url)
    assert post_sns(receiver.http, message).status_code == 202

    message = fake.sign_message(sns_notification(ses_bounce(["j@customer.example"])), 2, fake.cert_url(_cert_name()))
    for system in _receiver(_fake_settings(tmp_path, prefect_server, fake, sns_trust_store=None)):
        response = post_sns(system.http, message)
        assert response.status_code == 403 and response.json()["error"] == "certificate_untrusted", response.text
        assert system.count() == 0


@pytest.mark.parametrize("case", list(REFUSALS))
def test_untrusted_notifications_are_refused_and_keep_nothing(receiver, fake, case):
    spoil, status, error, may_fetch = REFUSALS[case]
    name = _cert_name()
    message = spoil(fake, sns_notification(ses_bounce(["b@customer.example"])), name)
    before = receiver.count()
    response = post_sns(receiver.http, message, headers={
        "content-type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": "Notification"})
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert receiver.rows(message["MessageId"]) == [] and receiver.count() == before
    if not may_fetch:
        assert fake.cert_fetches(name) == 0


@pytest.mark.parametrize("body, headers, status, error", [
    (b'{"Type": "Notification",', {}, 400, "malformed_json"),
    (b"[1, 2]", {}, 400, "malformed_json"),
    (b"\xff\xfe", {}, 400, "malformed_json"),
    ("header_type", {"x-amz-sns-message-type": "SubscriptionConfirmation"}, 400, "header_mismatch"),
    ("header_topic", {"x-amz-sns-topic-arn": OTHER_TOPIC}, 400, "header_mismatch"),
    ("valid", {"content-type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ("too_large", {}, 413, "body_too_large"),
])
def test_malformed_posts_are_4xx(receiver, fake, body, headers, status, error):
    message = fake.sign_message(sns_notification(ses_bounce(["b@customer.example"])))
    if body == "too_large":
        message = fake.sign_message(sns_notification("x" * (256 * 1024)))
    raw = json.dumps(message).encode() if isinstance(body, str) else body
    response = receiver.http.post("/inbound/ses", content=raw,
                                  headers={"content-type": "text/plain; charset=UTF-8", **headers})
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert receiver.rows(message["MessageId"]) == []


def test_certificate_trouble(receiver, fake):
    """A certificate host that fails now is a 503 (SNS delivers again, and then it is kept); a certificate URL
    that answers no certificate is a 403."""
    name = _cert_name()
    message = fake.sign_message(sns_notification(ses_bounce(["c@customer.example"])), 2, fake.cert_url(name))
    fake.fail_next(status=500)
    response = post_sns(receiver.http, message)
    assert response.status_code == 503 and response.json()["error"] == "certificate_unavailable", response.text
    assert receiver.rows(message["MessageId"]) == []
    assert post_sns(receiver.http, message).status_code == 202
    assert len(receiver.rows(message["MessageId"])) == 1

    for fault in ("missing", "malformed"):
        bounce = sns_notification(ses_bounce(["d@customer.example"]))
        message = fake.sign_message(bounce, 2, fake.cert_url(_cert_name()))
        fake.fail_next(status=404) if fault == "missing" else fake.malformed_next()
        response = post_sns(receiver.http, message)
        assert response.status_code == 403 and response.json()["error"] == "certificate_invalid", response.text
        assert receiver.rows(message["MessageId"]) == []


@pytest.mark.parametrize("cert_url", [
    "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",  # http: with the defaults, https only
    "https://127.0.0.1/SimpleNotificationService-x.pem",  # not an SNS host
    "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-x.pem",
    "https://evil.example/sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
])
def test_default_settings_fetch_certificates_from_sns_over_https_only(aws_only, fake, cert_url):
    message = fake.sign_message(sns_notification(ses_bounce(["e@customer.example"])), 2, cert_url)
    response = post_sns(aws_only.http, message)
    assert response.status_code == 403 and response.json()["error"] == "url_not_allowed", response.text
    assert aws_only.count() == 0


# ---- subscription and unsubscribe confirmations ----


def test_subscription_confirmation_of_the_topic_is_confirmed(receiver, fake):
    message = fake.confirmation(TOPIC_ARN)
    response = post_sns(receiver.http, message)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "confirmed" and response.json()["type"] == "SubscriptionConfirmation"
    assert fake.confirmations(message["Token"]) == [
        {"Action": "ConfirmSubscription", "TopicArn": TOPIC_ARN, "Token": message["Token"]}]
    assert receiver.rows(message["MessageId"]) == []


def test_subscription_confirmation_of_another_topic_is_not(receiver, fake):
    name = _cert_name()
    message = fake.confirmation(OTHER_TOPIC)
    message = fake.sign_message({k: v for k, v in message.items() if k not in ("Signature", "SigningCertURL")}, 2,
                                fake.cert_url(name))
    response = post_sns(receiver.http, message)
    assert response.status_code == 403 and response.json()["error"] == "topic_not_allowed", response.text
    assert fake.confirmations(message["Token"]) == [] and fake.cert_fetches(name) == 0


def test_subscribe_url_on_another_host_is_not_visited(receiver, fake):
    token = uuid.uuid4().hex
    url = fake.subscribe_url(TOPIC_ARN, token).replace("127.0.0.1", "localhost")
    message = fake.confirmation(TOPIC_ARN, subscribe_url=url)
    response = post_sns(receiver.http, message)
    assert response.status_code == 403 and response.json()["field"] == "SubscribeURL", response.text
    assert fake.confirmations(token) == []


def test_a_refused_confirmation_is_a_502_so_sns_sends_it_again(receiver, fake):
    message = fake.confirmation(TOPIC_ARN)
    fake.fail_next(status=403)
    response = post_sns(receiver.http, message)
    assert response.status_code == 502 and response.json()["error"] == "confirmation_failed", response.text
    assert post_sns(receiver.http, message).status_code == 200
    assert len(fake.confirmations(message["Token"])) == 2


def test_unsubscribe_confirmation_is_verified_and_ignored(receiver, fake):
    message = fake.confirmation(TOPIC_ARN, kind="UnsubscribeConfirmation")
    response = post_sns(receiver.http, message)
    assert response.status_code == 200 and response.json()["status"] == "ignored", response.text
    assert fake.confirmations(message["Token"]) == []
    forged = {**message, "Token": message["Token"][::-1]}
    assert post_sns(receiver.http, forged).status_code == 403


# ---- disabled, documented ----


def test_no_topics_no_endpoint(prefect_server, tmp_path, fake):
    name = _cert_name()
    message = fake.sign_message(sns_notification(ses_bounce(["f@customer.example"])), 2, fake.cert_url(name))
    settings = _fake_settings(tmp_path, prefect_server, fake, sns_topic_arns=[])
    for receiver in _receiver(settings):
        response = post_sns(receiver.http, message)
        assert response.status_code == 404 and response.json()["error"] == "inbound_not_enabled", response.text
        assert receiver.count() == 0
        operation = receiver.http.get("/openapi.json").json()["paths"]["/inbound/ses"]["post"]
        assert {"200", "202", "400", "403", "404", "413", "415", "502", "503"} <= set(operation["responses"])
        assert "text/plain" in operation["requestBody"]["content"]
    assert fake.cert_fetches(name) == 0


# ---- the parts on their own ----


def test_string_to_sign_follows_the_aws_documentation():
    notification = {"Type": "Notification", "MessageId": "m", "TopicArn": "t", "Message": "a\nb", "Timestamp": "ts",
                    "Subject": "s", "UnsubscribeURL": "u"}
    assert string_to_sign(notification) == (b"Message\na\nb\nMessageId\nm\nSubject\ns\nTimestamp\nts\nTopicArn\nt\n"
                                            b"Type\nNotification\n")
    del notification["Subject"]
    assert b"Subject" not in string_to_sign(notification)
    confirmation = {"Type": "SubscriptionConfirmation", "MessageId": "m", "TopicArn": "t", "Message": "hi",
                    "Timestamp": "ts", "Token": "k", "SubscribeURL": "s"}
    assert string_to_sign(confirmation) == (b"Message\nhi\nMessageId\nm\nSubscribeURL\ns\nTimestamp\nts\nToken\nk\n"
                                            b"TopicArn\nt\nType\nSubscriptionConfirmation\n")


@pytest.mark.parametrize("url, allowed", [
    ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem", True),
    ("https://SNS.eu-west-2.amazonaws.com/SimpleNotificationService-abc.pem", True),
    ("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem", True),
    ("https://sns.us-gov-west-1.amazonaws.com:443/SimpleNotificationService-abc.pem", True),
    ("https://sns.s3.amazonaws.com/SimpleNotificationService-abc.pem", False),  # anyone's S3 bucket
    ("https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-abc.pem", False),
    ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.txt", False),
    ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem?x=1", False),
    ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem#x", False),
    ("https://sns.eu-west-1.amazonaws.com.cn/SimpleNotificationService-abc.pem", False),
    ("http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem", False),
    ("https://sns.us-east-1.amazonaws.com@evil.example/x.pem", False),
    ("https://evil.example#@sns.us-east-1.amazonaws.com/x.pem", False),
    ("https://sns.us-east-1.amazonaws.com\\@evil.example/x.pem", False),
    ("https://sns.us-east-1.amazonaws.com.evil.example/x.pem", False),
    ("https://xsns.us-east-1.amazonaws.com/x.pem", False),
    ("https://sns.us-east-1.amazonaws.com\n/x.pem", False),
    ("ftp://sns.us-east-1.amazonaws.com/x.pem", False),
    ("/SimpleNotificationService-abc.pem", False),
])
def test_default_url_rule(url, allowed, tmp_path):
    verifier = SnsVerifier(ReceiverSettings(webhook_secrets=[SECRET], data_dir=tmp_path))
    if allowed:
        assert verifier.allowed_url(url, "SigningCertURL").host.startswith("sns.")
    else:
        with pytest.raises(SnsRejected) as refused:
            verifier.allowed_url(url, "SigningCertURL")
        assert refused.value.status_code == 403


@pytest.mark.parametrize("url, allowed", [
    ("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=t&Token=k", True),
    ("https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=s", False),
    ("https://sns.us-east-1.amazonaws.com/other?Action=ConfirmSubscription", False),
    ("https://sns.s3.amazonaws.com/?Action=ConfirmSubscription", False),
])
def test_default_subscribe_url_rule(url, allowed, tmp_path):
    verifier = SnsVerifier(ReceiverSettings(webhook_secrets=[SECRET], data_dir=tmp_path))
    if allowed:
        assert verifier.allowed_url(url, "SubscribeURL").params["Token"] == "k"
    else:
        with pytest.raises(SnsRejected):
            verifier.allowed_url(url, "SubscribeURL")


def test_the_tests_only_overrides_are_refused_in_production(tmp_path):
    production = {"webhook_secrets": [SECRET], "data_dir": tmp_path, "environment": "production",
                  "link_secret": "a-real-production-link-secret-0123", "public_base_url": "https://upsell.example.com",
                  "sender_postal_address": "Acme Ltd, 1 Main Street, Springfield"}
    with pytest.raises(ValidationError, match="SNS_CERT_HOST_PATTERN"):
        ReceiverSettings(**production, sns_cert_host_pattern=r"127\.0\.0\.1")
    with pytest.raises(ValidationError, match="SNS_TRUST_STORE"):
        ReceiverSettings(**production, sns_trust_store=tmp_path / "ca.pem")
    settings = ReceiverSettings(**production, inbound_s3_buckets="mail-a, mail-b")
    assert settings.inbound_s3_buckets == ["mail-a", "mail-b"] and not settings.sns_allow_signature_v1


def test_settings(tmp_path):
    settings = ReceiverSettings(webhook_secrets=[SECRET], data_dir=tmp_path, sns_topic_arns="arn:a, arn:b",
                                sns_url_schemes="https,http")
    assert settings.sns_topic_arns == ["arn:a", "arn:b"] and settings.sns_url_schemes == ["https", "http"]
    assert ReceiverSettings(webhook_secrets=[SECRET], data_dir=tmp_path).sns_topic_arns == []
    with pytest.raises(ValidationError, match="SNS_URL_SCHEMES"):
        ReceiverSettings(webhook_secrets=[SECRET], data_dir=tmp_path, environment="production",
                         link_secret="a-real-production-link-secret-0123", sns_url_schemes=["http"],
                         public_base_url="https://upsell.example.com", sender_postal_address="Acme Ltd, Springfield")
    with pytest.raises(ValidationError, match="regular expression"):
        ReceiverSettings(webhook_secrets=[SECRET], data_dir=tmp_path, sns_cert_host_pattern="(")


def test_store_inbound(tmp_path):
    store = ReceiverStore(tmp_path / "receiver.db")
    try:
        assert store.insert_inbound(message_id="m1", topic_arn=TOPIC_ARN, message="{}", sent_at="t1")
        assert store.insert_inbound(message_id="m2", topic_arn=TOPIC_ARN, message="{}")
        assert not store.insert_inbound(message_id="m1", topic_arn=TOPIC_ARN, message="changed")
        assert [r["message_id"] for r in store.pending_inbound(10)] == ["m1", "m2"]
        store.mark_inbound("m1", status="processed", detail="reply resumed", flow_run_id="run-1")
        store.mark_inbound("m2", status="received", detail="Prefect down; retried", attempts=1)
        assert [r["message_id"] for r in store.pending_inbound(10)] == ["m2"]
        rows = store.inbound_rows(10)
        assert [r["message_id"] for r in rows] == ["m2", "m1"]  # newest first
        assert rows[1] | {"received_at": None, "updated_at": None} == {
            "message_id": "m1", "topic_arn": TOPIC_ARN, "message": "{}", "sent_at": "t1", "status": "processed",
            "detail": "reply resumed", "flow_run_id": "run-1", "attempts": 0, "received_at": None, "updated_at": None}
        store.mark_inbound("m1", status="processed")
        store.mark_inbound("m2", status="failed", detail="gave up")
        assert store.inbound_rows(10)[1]["flow_run_id"] == "run-1" and store.inbound_rows(1)[0]["attempts"] == 1
    finally:
        store.close()
