"""Replies by email, end to end: a real upsell run waits for the customer's reply, the customer answers its email,
and the SES notification (signed by a test certificate the fake SNS serves) reaches the receiver, which resumes
the run. Also: an unclear reply goes to a person, an automatic reply and a forged address change nothing, a hard
bounce ends the upsell and suppresses the address, a soft bounce is only recorded, and an email stored in S3
(moto) is read from there.

Only the customer answers for the customer: an email that names the run by its thread only, by a guessed id, or
reaches the signed address from anyone but the contact or without SES's word for the sender's domain is never
applied as an answer (it changes nothing, or waits for a person with the reason and the sender)."""

from __future__ import annotations

import email
import sqlite3
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from email import policy
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from blocks.mongo import SqliteOpportunityStore
from flows.models import CustomerReply, UpsellOutcome, UpsellStatus, UsageAlert
from flows.upsell import upsell
from tests.fakes.sns import (
    TOPIC_ARN,
    FakeSns,
    post_sns,
    raw_email,
    ses_bounce,
    ses_complaint,
    ses_mail,
    ses_received,
    ses_received_in_s3,
    sns_notification,
)
from tests.support import find_run_id, resume, saved_blocks, wait_until_paused
from tests.test_webhook_support import SECRET
from webhook.serve import ReceiverThread
from webhook.settings import ReceiverSettings

REPLY_DOMAIN = "replies.example.com"
#: The one bucket the receiver reads inbound emails from (an S3 action naming another is refused).
S3_BUCKET = "upsell-inbound-test"
#: The contact of account 12345 in the stand-in CRM (blocks/fixtures/accounts.json), and their domain.
CONTACT = "dana.whitfield@acme-trading.example.com"
CONTACT_DOMAIN = "acme-trading.example.com"


def customer_email(**fields: Any) -> bytes:
    """An email from the contact, DKIM-signed by their domain (SES's verdicts say whether the signature held)."""
    return raw_email(**{"sender": f"Dana Whitfield <{CONTACT}>", "dkim_domain": CONTACT_DOMAIN, **fields})


def from_contact(email_bytes: bytes, reply_to: str, **fields: Any) -> dict[str, Any]:
    """The SES "Received" event of an email delivered to `reply_to`, its envelope sender the contact."""
    return ses_received(email_bytes, recipients=[reply_to], mail=ses_mail(source=CONTACT, destination=[reply_to]),
                        **fields)  # fmt: skip


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeSns]:
    sns = FakeSns().start()
    yield sns
    sns.stop()


class Inbound:
    """A receiver subscribed to the test topic (sharing the test's data folder with the run) and a client of it."""

    def __init__(self, thread: ReceiverThread, http: httpx.Client, fake: FakeSns) -> None:
        self.thread, self.http, self.fake = thread, http, fake

    def post(self, ses_event: dict[str, Any], version: int = 2) -> str:
        message = self.fake.sign_message(sns_notification(ses_event), version)  # type: ignore[arg-type]
        answer = post_sns(self.http, message)
        assert answer.status_code == 202, answer.text
        return str(message["MessageId"])

    def status(self, message_id: str, timeout_s: float = 30) -> dict[str, Any]:
        """The row of the notification once the receiver's worker is done with it."""
        deadline = time.monotonic() + timeout_s
        while True:
            with sqlite3.connect(self.thread.settings.receiver_db_path) as db:
                db.row_factory = sqlite3.Row
                row = dict(db.execute("SELECT * FROM inbound WHERE message_id=?", (message_id,)).fetchone())
            if row["status"] != "received" or time.monotonic() > deadline:
                return row
            time.sleep(0.2)


@pytest.fixture
def inbound(fake: FakeSns, prefect_server: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Inbound]:
    monkeypatch.setenv("UPSELL_REPLY_DOMAIN", REPLY_DOMAIN)
    settings = ReceiverSettings(
        webhook_secrets=[SECRET], data_dir=data_dir, receiver_db=data_dir / "receiver.db",
        prefect_api_url=prefect_server, sns_topic_arns=[TOPIC_ARN], sns_cert_host_pattern=r"127\.0\.0\.1",
        sns_url_schemes=["http"], inbound_s3_buckets=[S3_BUCKET], sns_trust_store=fake.trust_store,
    )  # fmt: skip
    with ReceiverThread(settings) as thread, httpx.Client(base_url=thread.url, timeout=30) as http:
        yield Inbound(thread, http, fake)


@contextmanager
def waiting_run(event_id: str) -> Iterator[tuple[Future[UpsellOutcome], str]]:
    """An upsell run (account 12345) waiting for the customer's reply: (its outcome to come, its id)."""
    alert = UsageAlert(event_id=event_id, account_id="12345", metric_type="trade_volume", current_value=150,
                       threshold=100, severity="critical")  # fmt: skip
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(upsell, alert, reply_timeout_s=600)
        run_id = find_run_id(alert.run_name)
        wait_until_paused(run_id, "reply")
        yield future, str(run_id)


def sent_email(data_dir: Path) -> email.message.EmailMessage:
    (path,) = (data_dir / "outbox").glob("*.eml")
    return email.message_from_bytes(path.read_bytes(), policy=policy.default)  # type: ignore[return-value]


GMAIL_QUOTE = "\n\nOn Mon, 7 Dec 2026 at 09:00, Upsell Team <upsell@localhost> wrote:\n> Reply yes to talk.\n> Yes!\n"


def test_an_emailed_yes_resumes_the_run_and_its_words_are_recorded(inbound: Inbound, data_dir: Path,
                                                                   event_id: str) -> None:
    with waiting_run(event_id) as (outcome, run_id):
        offer = sent_email(data_dir)
        reply_to = str(offer["Reply-To"])
        assert reply_to.startswith("upsell+") and reply_to.endswith(f"@{REPLY_DOMAIN}")
        answer = customer_email(to=reply_to, text="Sounds good, can we talk Tuesday?" + GMAIL_QUOTE,
                                in_reply_to=str(offer["Message-ID"]))
        row = inbound.status(inbound.post(from_contact(answer, reply_to, encoding="BASE64")))
        assert row["status"] == "resumed" and row["flow_run_id"] == run_id, row
        result = outcome.result(timeout=60)
    assert result.reply is CustomerReply.YES
    logged = SqliteOpportunityStore(data_dir / "upsell.db").get_opportunity(event_id)
    assert logged is not None and logged.reply_text == "Sounds good, can we talk Tuesday?"


def test_an_unclear_reply_waits_for_a_person_and_noise_changes_nothing(inbound: Inbound, data_dir: Path,
                                                                       event_id: str) -> None:
    with waiting_run(event_id) as (outcome, run_id):
        reply_to = str(sent_email(data_dir)["Reply-To"])
        out_of_office = customer_email(to=reply_to, subject="Automatic reply: A plan for your growth",
                                       text="I am out of the office until Monday.")
        out_of_office = b"Auto-Submitted: auto-replied\r\n" + out_of_office
        ignored = inbound.status(inbound.post(from_contact(out_of_office, reply_to)))
        assert ignored["status"] == "auto_reply", ignored
        local, domain = reply_to.split("@")
        forged = f"{local[:-22]}{'a' * 13}{local[-9:]}@{domain}"  # the run's address with a MAC we did not make
        assert forged != reply_to
        stranger = customer_email(to=forged, text="Yes, absolutely.")
        assert inbound.status(inbound.post(from_contact(stranger, forged)))["status"] == "unmatched"
        wait_until_paused(run_id, "reply")  # still waiting: neither was taken for an answer

        unclear = customer_email(to=reply_to, text="Who gave you this address? Call my assistant.", subject="Re: plan")
        assert inbound.status(inbound.post(from_contact(unclear, reply_to)))["status"] == "resumed"
        wait_until_paused(run_id, "read-reply")  # a person reads it: the form shows the customer's words
        resume(run_id, "read-reply", {"reply": "maybe", "note": "asked for a call later", "reviewer": "Kim"})
        result = outcome.result(timeout=60)
    assert result.reply is CustomerReply.MAYBE
    logged = SqliteOpportunityStore(data_dir / "upsell.db").get_opportunity(event_id)
    assert logged is not None and "Who gave you this address?" in logged.reply_text


@pytest.mark.parametrize("kind, status", [("bounce", UpsellStatus.BOUNCED), ("complaint", UpsellStatus.COMPLAINED)])
def test_a_hard_bounce_or_a_complaint_ends_the_upsell_and_suppresses_the_address(
    inbound: Inbound, data_dir: Path, event_id: str, kind: str, status: UpsellStatus
) -> None:
    with waiting_run(event_id) as (outcome, run_id):
        offer = sent_email(data_dir)
        to, reply_to = str(offer["To"]), str(offer["Reply-To"])
        if kind == "bounce":
            soft = ses_bounce([to], bounce_type="Transient")
            assert inbound.status(inbound.post(soft))["status"] == "soft_bounce"
            wait_until_paused(run_id, "reply")  # a soft bounce is recorded only
        final = ses_bounce([to]) if kind == "bounce" else ses_complaint([to])
        final["mail"]["headers"].append({"name": "Reply-To", "value": reply_to})  # SES sends the original headers
        row = inbound.status(inbound.post(final))
        assert row["status"] == "resumed" and row["flow_run_id"] == run_id, row
        result = outcome.result(timeout=60)
    assert result.status is status
    store = SqliteOpportunityStore(data_dir / "upsell.db")
    assert store.is_suppressed(to)
    logged = store.get_opportunity(event_id)
    assert logged is not None and logged.status is status


def test_an_email_stored_in_s3_is_read_from_there(inbound: Inbound, data_dir: Path, event_id: str,
                                                  moto_url: str) -> None:
    from blocks.ses import SesEmailSender

    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=moto_url, aws_access_key_id="testing",
                      aws_secret_access_key="testing")  # fmt: skip
    bucket, key = S3_BUCKET, f"mail/{uuid.uuid4().hex}"
    s3.create_bucket(Bucket=bucket)
    with waiting_run(event_id) as (outcome, run_id):
        reply_to = str(sent_email(data_dir)["Reply-To"])
        s3.put_object(Bucket=bucket, Key=key, Body=customer_email(to=reply_to, text="No thanks, we are fine."))
        block = SesEmailSender(region_name="us-east-1", from_address="upsell@example.com", endpoint_url=moto_url,
                               aws_access_key_id="testing", aws_secret_access_key="testing")  # type: ignore[arg-type]
        with saved_blocks({"upsell-ses": block}):  # the receiver reads S3 with the SES block's account
            received = ses_received_in_s3(bucket, key, recipients=[reply_to],
                                          mail=ses_mail(source=CONTACT, destination=[reply_to]))
            row = inbound.status(inbound.post(received))
        assert row["status"] == "resumed", row
        assert outcome.result(timeout=60).reply is CustomerReply.NO


# ---- only the customer answers for the customer ----


def reading_form(run_id: str) -> str:
    """The description of the run's reply-reading form (what the person deciding reads)."""
    from prefect.client.orchestration import get_client
    from prefect.input import keyset_from_paused_state, read_flow_run_input

    run = wait_until_paused(run_id, "read-reply")
    keyset = keyset_from_paused_state(run.state)  # type: ignore[arg-type]
    with get_client(sync_client=True):
        return str(read_flow_run_input(keyset["description"], flow_run_id=run.id))


def test_an_email_naming_the_run_by_its_thread_or_a_guessed_id_changes_nothing(
    inbound: Inbound, data_dir: Path, event_id: str
) -> None:
    with waiting_run(event_id) as (outcome, run_id):
        offer = sent_email(data_dir)
        reply_to, our_id = str(offer["Reply-To"]), str(offer["Message-ID"])
        assert event_id not in our_id and run_id.replace("-", "") not in reply_to.lower()  # nothing to predict from
        attacker = "Mallory <attacker@evil.example>"
        tries = {
            "thread id only": raw_email(sender=attacker, to=f"upsell@{REPLY_DOMAIN}", text="Yes, let's talk.",
                                        in_reply_to=our_id),  # fmt: skip
            "guessed id": raw_email(sender=attacker, to=f"upsell@{REPLY_DOMAIN}", text="Yes, let's talk.",
                                    in_reply_to=f"<upsell.{event_id}.offer@x>"),  # fmt: skip
            "the signed address in To only": customer_email(to=reply_to, text="Yes, let's talk.", in_reply_to=our_id),
        }
        for what, forged in tries.items():
            envelope = [f"upsell@{REPLY_DOMAIN}"]  # what SES delivered it to: not the run's signed address
            row = inbound.status(inbound.post(ses_received(forged, recipients=envelope)))
            assert row["status"] == "unmatched" and row["flow_run_id"] is None, (what, row)
        wait_until_paused(run_id, "reply")  # still waiting for the customer
        resume(run_id, "reply", {"reply": "no"})
        assert outcome.result(timeout=60).reply is CustomerReply.NO


FORGED = {
    # a colleague forwards the email (or was in Cc): the copy reaches the signed address, from someone else
    "forwarded copy": dict(sender=f"Sam Colleague <sam@{CONTACT_DOMAIN}>", source=f"sam@{CONTACT_DOMAIN}",
                           verdicts={}, why="not the contact"),
    "wrong sender": dict(sender="Mallory <attacker@evil.example>", source="attacker@evil.example", verdicts={},
                         dkim="evil.example", why="not the contact"),
    "spoofed From, SPF and DKIM failed": dict(verdicts={"spf": "FAIL", "dkim": "FAIL"}, why="neither SPF nor DKIM"),
    "spoofed From, DMARC failed": dict(verdicts={"dmarc": "FAIL"}, why="DMARC failed"),
    # SPF passes for the attacker's own envelope domain, no DKIM of the contact's domain: nothing vouches for it
    "spoofed From, SPF of another domain": dict(source="bounce@evil.example", dkim=None,
                                                verdicts={"dkim": "GRAY", "dmarc": "GRAY"}, why="neither SPF nor DKIM"),
}


@pytest.mark.parametrize("case", FORGED, ids=list(FORGED))
def test_a_reply_we_cannot_tell_the_customer_wrote_waits_for_a_person(
    inbound: Inbound, data_dir: Path, event_id: str, case: str
) -> None:
    """At FULL_AUTOMATION (severity critical), a "yes" that SES delivered to the run's signed address but that is not
    verified as the contact's is never applied: the run waits at Reply reading, whose form names the sender and the
    reason, and the receiver records why. Nothing is booked unless a person decides."""
    forged: dict[str, Any] = FORGED[case]
    with waiting_run(event_id) as (outcome, run_id):
        reply_to = str(sent_email(data_dir)["Reply-To"])
        sender = forged.get("sender", f"Dana Whitfield <{CONTACT}>")
        email_bytes = raw_email(sender=sender, to=reply_to, text="Yes, let's talk. Book it.",
                                dkim_domain=forged.get("dkim", CONTACT_DOMAIN))  # fmt: skip
        mail = ses_mail(source=forged.get("source", CONTACT), destination=[reply_to])
        row = inbound.status(inbound.post(ses_received(email_bytes, recipients=[reply_to], mail=mail,
                                                       verdicts=forged["verdicts"])))  # fmt: skip
        assert row["status"] == "unverified" and row["flow_run_id"] == run_id, row
        assert forged["why"] in row["detail"], row
        form = reading_form(run_id)
        assert "not applied" in form and forged["why"] in form, form
        assert sender.split("<")[-1].rstrip(">") in form  # the sender is shown to the person deciding
        resume(run_id, "read-reply", {"reply": "no", "note": "not from the customer", "reviewer": "Kim"})
        result = outcome.result(timeout=60)
    assert result.reply is CustomerReply.NO and result.meeting is None
    assert not (data_dir / "meetings.jsonl").exists()


def test_a_large_email_is_read_off_the_event_loop(inbound: Inbound, data_dir: Path) -> None:
    """A 10 MB email (the most the mailbox reads) of half a million header lines takes a second or more to parse;
    meanwhile the receiver answers other requests within 100 ms, since the email is read in a process of its own.

    A parse on the event loop would hold one request for the whole parse (the client asks one at a time); a busy
    machine may delay any request a little, hence: 95 % within 100 ms, none anywhere near the parse's time."""
    from tasks.content.replies import parse_reply
    from tasks.runtime.links import reply_address
    from tasks.runtime.settings import get_settings

    secret = get_settings().link_secret.get_secret_value()
    reply_to = reply_address(str(uuid.uuid4()), CONTACT, secret, REPLY_DOMAIN)  # a run that no longer exists
    head, blank, body = customer_email(to=reply_to, text="Yes, let's talk.").partition(b"\r\n\r\n")
    filler = b"".join(b"X-Filler-%d: a\r\n" % i for i in range(480_000))
    big = head + b"\r\n" + filler + blank + body
    assert 9_000_000 < len(big) <= 10 * 1024 * 1024
    started = time.perf_counter()
    assert parse_reply(big).text == "Yes, let's talk."
    parse_s = time.perf_counter() - started
    assert parse_s > 0.5, parse_s
    key = f"mail/{uuid.uuid4().hex}"
    stored = data_dir / "inbound" / S3_BUCKET / key  # the local stand-in of the S3 mailbox
    stored.parent.mkdir(parents=True)
    stored.write_bytes(big)

    message_id = inbound.post(ses_received_in_s3(S3_BUCKET, key, recipients=[reply_to],
                                                 mail=ses_mail(source=CONTACT, destination=[reply_to])))  # fmt: skip
    latencies = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        started = time.perf_counter()
        assert inbound.http.get("/healthz").status_code == 200
        latencies.append(time.perf_counter() - started)
        with sqlite3.connect(inbound.thread.settings.receiver_db_path) as db:
            status = db.execute("SELECT status FROM inbound WHERE message_id=?", (message_id,)).fetchone()[0]
        if status != "received":
            break
        time.sleep(0.01)
    assert status == "not_waiting", status  # read whole, matched to its (gone) run, nothing answered
    ordered = sorted(latencies)
    assert len(ordered) >= 20, (parse_s, ordered)
    assert ordered[int(len(ordered) * 0.95)] < 0.1 and ordered[-1] < min(0.5, parse_s / 2), (parse_s, ordered[-5:])
