"""A/B variant templates and subjects, fixed Message-IDs, and the follow-up: threaded, checked, sent at most once."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import boto3
import pytest
from prefect import flow
from pydantic import SecretStr

from blocks.anthropic import RuleBasedPlanner
from blocks.mongo import SqliteOpportunityStore
from blocks.ses import OutboxEmailSender, SesEmailSender
from blocks.sources import FixtureSource
from flows.models import ContractData, EmailDraft, EmailResult, UsageAlert
from tasks.content.email import available_templates, build_message, check_subject, message_id_for
from tasks.content.outgoing import allowed_links, email_problems
from tasks.runtime.policy import configured
from tasks.runtime.settings import get_settings
from tasks.send_email_draft import (
    EMAIL_STEP,
    FOLLOW_UP_STEP,
    draft_email,
    draft_follow_up,
    send_email_draft,
    send_follow_up,
)
from tests.fakes.ses import parse_raw, sent_raw_messages
from tests.support import outbox_email

REGION = "us-east-1"
LOCAL_FROM = "upsell@localhost"  # the outbox stand-in's From


@flow(name="offer-email-check")
def _send_offer(alert: UsageAlert, draft: EmailDraft) -> EmailResult:
    """Run the real send_email_draft task inside a flow run, as the upsell flow does."""
    return configured(send_email_draft)(alert, draft)


@flow(name="follow-up-email-check")
def _send_follow_up(alert: UsageAlert, draft: EmailDraft, first_provider_id: str | None) -> EmailResult:
    """Run the real send_follow_up task inside a flow run (each call a new run: a re-run of the step)."""
    return configured(send_follow_up)(alert, draft, first_provider_id)


def _alert() -> UsageAlert:
    # "." and ":" are valid in an event id but not as they are in a Message-ID
    return UsageAlert(event_id=f"evt.{uuid.uuid4().hex[:12]}:1", account_id="12345", metric_type="trade_volume",
                      current_value=150, threshold=100)  # fmt: skip


def _contract(**changes: Any) -> ContractData:
    return FixtureSource().fetch_contract("12345").model_copy(update=changes)


def _draft(alert: UsageAlert, contract: ContractData | None = None, **variant: Any) -> EmailDraft:
    """The first email as the flow drafts it (signed links of this process's settings)."""
    contract = contract or _contract()
    usage = FixtureSource().fetch_usage(alert)
    return draft_email(alert, usage, contract, RuleBasedPlanner().plan(usage, contract).plan, **variant)


def _problems(draft: EmailDraft) -> list[str]:
    return email_problems(draft, allowed_links(get_settings().public_base_url))


def _read(path: Path) -> EmailMessage:
    with path.open("rb") as handle:
        return BytesParser(policy=policy.default).parse(handle)  # type: ignore[return-value]


def _text(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())  # type: ignore[attr-defined]


def _record(data_dir: Path, event_id: str, step: str) -> dict[str, Any] | None:
    store = SqliteOpportunityStore(data_dir / "upsell.db")
    try:
        return store.get_record(event_id, step)
    finally:
        store.close()


def test_a_variant_sets_subject_and_message_and_crm_text_is_still_cleaned() -> None:
    alert = _alert()
    hostile = _contract(
        company_name="Acme\x00 Trading\u202e",
        contact_info={"name": "Dana\u200b Whitfield", "email": "dana@acme-trading.example.com"},
    )
    line = "{company}, {plan} fits how you work now"

    default = _draft(alert, hostile)
    short = _draft(alert, hostile, template="upsell_short", subject=line)

    assert short.subject == "Acme Trading, Professional fits how you work now"
    assert short.message != default.message and len(short.message) < len(default.message)
    assert short.message.startswith("Hi Dana,") and "Professional" in short.body_html
    assert short.reply_links["yes"] in short.body_text and short.unsubscribe_url in short.body_html
    assert _problems(short) == [] and _problems(default) == []
    # a company name that carries anything unsafe is not filled in at all
    unsafe = _contract(company_name="Acme\r\nBcc: leak@attacker.example")
    assert _draft(alert, unsafe, subject=line).subject == "your team, Professional fits how you work now"
    # the configured line is trusted text, still normalised for the header: no line break reaches it
    spliced = _draft(alert, subject="Growing?\r\nBcc: {plan}")
    assert spliced.subject == "Growing? Bcc: Professional"
    assert build_message(spliced, from_address=LOCAL_FROM)["Subject"] == spliced.subject


@pytest.mark.parametrize(
    "line", ["{contact}", "{}", "{0}", "{company.__class__}", "{plan[0]}", "{plan!r}", "{company:>90}", "Save {"]
)
def test_a_subject_with_another_placeholder_is_refused(line: str) -> None:
    with pytest.raises(ValueError, match="subject"):
        check_subject(line)
    with pytest.raises(ValueError, match="subject"):
        _draft(_alert(), subject=line)


def test_literal_braces_are_allowed_in_a_subject() -> None:
    assert _draft(_alert(), subject="{{New}} {plan}").subject == "{New} Professional"


def test_the_bundled_templates_are_listed_and_each_renders_a_clean_email() -> None:
    assert available_templates() == {"upsell_email", "upsell_short"}
    alert = _alert()
    drafts = {name: _draft(alert, template=name) for name in available_templates()}
    assert len({d.message for d in drafts.values()}) == len(drafts)
    assert all(_problems(d) == [] for d in drafts.values())
    with pytest.raises(ValueError, match="unknown email template 'follow_up_message'"):
        _draft(alert, template="follow_up_message")  # a bundled file, but not a choice of the playbook


def test_the_message_id_is_fixed_per_event_and_kind_and_shows_no_event_id() -> None:
    secret = "a-link-secret-of-the-test-0123456789abcdef"
    offer = message_id_for("evt-2024-0002", "offer", "upsell@sales.example", secret)
    assert offer == message_id_for("evt-2024-0002", "offer", "upsell@sales.example", secret)  # fixed per event
    assert re.fullmatch(r"<[a-z2-7]{26}@sales\.example>", offer) and "2024" not in offer and "0002" not in offer
    others = {message_id_for(e, k, "upsell@sales.example", s) for e in ("evt-2024-0002", "evt-2024-0003")
              for k in ("offer", "follow-up") for s in (secret, secret + "x")}  # fmt: skip
    assert len(others) == 8  # another event, kind or secret: another id, none predictable from this one
    draft = _draft(_alert())
    built = [build_message(draft, from_address=LOCAL_FROM, message_id=offer) for _ in range(2)]
    assert built[0]["Message-ID"] == built[1]["Message-ID"] == offer  # a retry builds the same message
    parsed = BytesParser(policy=policy.default).parsebytes(built[0].as_bytes())
    assert parsed["Message-ID"] == offer and not parsed["Message-ID"].defects  # a valid msg-id
    assert "In-Reply-To" not in parsed and "References" not in parsed


def test_the_follow_up_answers_the_first_email_in_its_thread_and_goes_once(data_dir: Path) -> None:
    alert, contract = _alert(), _contract()
    first = _draft(alert, contract)
    sent = _send_offer(alert, first)

    follow_up = draft_follow_up(alert, contract, first)
    results = [_send_follow_up(alert, follow_up, sent.message_id) for _ in range(2)]  # the second: a re-run

    assert follow_up.subject == f"Re: {first.subject}" and follow_up.to == first.to
    assert (follow_up.reply_links, follow_up.unsubscribe_url) == (first.reply_links, first.unsubscribe_url)
    assert follow_up.message.startswith("Hi Dana,") and "trade volume" in follow_up.message
    assert [r.status for r in results] == ["sent", "already_sent"]
    outbox = OutboxEmailSender(data_dir / "outbox")
    assert len(list(outbox.outbox.glob("*.eml"))) == 2  # the offer and one follow-up
    offer = _read(outbox_email(outbox.outbox, alert.event_id))
    reply = _read(outbox_email(outbox.outbox, alert.event_id, "follow-up"))
    secret = get_settings().link_secret.get_secret_value()
    offer_id = message_id_for(alert.event_id, "offer", LOCAL_FROM, secret)
    assert offer["Message-ID"] == sent.message_id == offer_id
    assert reply["Message-ID"] == results[0].message_id == results[1].message_id
    assert reply["Message-ID"] == message_id_for(alert.event_id, "follow-up", LOCAL_FROM, secret)
    assert reply["In-Reply-To"] == reply["References"] == offer_id
    assert reply["Subject"] == follow_up.subject and reply["To"] == first.to
    assert reply["List-Unsubscribe"] == f"<{first.unsubscribe_url}>"
    assert first.reply_links["maybe"] in _text(reply) and first.unsubscribe_url in _text(reply)
    record = _record(data_dir, alert.event_id, FOLLOW_UP_STEP)
    assert record is not None and record["status"] == "done"


def test_an_unsubscribed_contact_gets_no_follow_up(data_dir: Path) -> None:
    alert, contract = _alert(), _contract()
    first = _draft(alert, contract)
    assert _send_offer(alert, first).status == "sent"
    store = SqliteOpportunityStore(data_dir / "upsell.db")
    store.add_suppression(first.to, "unsubscribed")
    store.close()

    result = _send_follow_up(alert, draft_follow_up(alert, contract, first), None)

    assert result.status == "suppressed"
    assert not outbox_email(data_dir / "outbox", alert.event_id, "follow-up").exists()
    assert _record(data_dir, alert.event_id, FOLLOW_UP_STEP) is None


def test_the_final_check_holds_back_a_follow_up_with_a_foreign_link(data_dir: Path) -> None:
    alert, contract = _alert(), _contract()
    follow_up = draft_follow_up(alert, contract, _draft(alert, contract))
    tampered = follow_up.model_copy(update={"body_text": follow_up.body_text + "\nhttps://attacker.example/x"})

    result = _send_follow_up(alert, tampered, None)

    assert result.status == "blocked" and "text part: a link" in result.detail
    assert not (data_dir / "outbox").exists()


@pytest.fixture
def ses_sender(moto_url: str) -> Iterator[SesEmailSender]:
    """The `upsell-ses` block against moto, from a domain verified there, for one test."""
    domain = f"sales-{uuid.uuid4().hex[:8]}.example.com"
    ses = boto3.client("sesv2", region_name=REGION, endpoint_url=moto_url,
                       aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    ses.create_email_identity(EmailIdentity=domain)
    ses.close()
    block = SesEmailSender(
        region_name=REGION,
        from_address=f"upsell@{domain}",
        aws_access_key_id=SecretStr("testing"),
        aws_secret_access_key=SecretStr("testing"),
        endpoint_url=moto_url,
    )
    block.save("upsell-ses", overwrite=True)
    yield block
    SesEmailSender.delete("upsell-ses")


def test_through_ses_the_follow_up_names_the_id_ses_gave_the_first_email(
    ses_sender: SesEmailSender, moto_url: str, data_dir: Path
) -> None:
    alert = _alert()
    recipient = f"buyer-{uuid.uuid4().hex[:10]}@customer.example.com"
    contract = _contract(contact_info={"name": "Dana Whitfield", "email": recipient})
    first = _draft(alert, contract)

    sent = _send_offer(alert, first)
    results = [_send_follow_up(alert, draft_follow_up(alert, contract, first), sent.message_id) for _ in range(2)]

    assert (sent.status, sent.provider) == ("sent", "SesEmailClient")
    assert [r.status for r in results] == ["sent", "already_sent"]
    raws = [m for m in sent_raw_messages(moto_url) if recipient in m["destinations"]]
    assert [m["id"] for m in raws] == [sent.message_id, results[0].message_id]  # one follow-up, after the offer
    reply = parse_raw(raws[1]["raw_data"])
    secret = get_settings().link_secret.get_secret_value()
    ours = message_id_for(alert.event_id, "offer", ses_sender.from_address, secret)
    seen = f"<{sent.message_id}@email.amazonses.com>"  # SES replaces our Message-ID with this one
    assert reply["In-Reply-To"] == seen
    assert reply["References"] == f"{ours} {seen}"
    assert reply["Message-ID"] == message_id_for(alert.event_id, "follow-up", ses_sender.from_address, secret)
    assert reply["Subject"] == f"Re: {first.subject}"
    record = _record(data_dir, alert.event_id, EMAIL_STEP)
    assert record is not None and record["result"] == {"message_id": sent.message_id}
