"""Email through SES: boto3 `sesv2` against moto in server mode, with a recording proxy for failures."""

from __future__ import annotations

import base64
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.states import State
from pydantic import SecretStr

from blocks.anthropic import RuleBasedPlanner
from blocks.interfaces import SendOutcomeUnknown
from blocks.mongo import SqliteOpportunityStore
from blocks.ses import IDEMPOTENCY_HEADER, SesEmailClient, SesEmailSender
from blocks.sources import FixtureSource
from flows.models import EmailDraft, EmailResult, UsageAlert
from tasks.content.email import build_message, compose_email
from tasks.runtime.policy import configured, is_permanent
from tasks.send_email_draft import EMAIL_STEP, send_email_draft
from tests.fakes.server import serve_in_thread
from tests.fakes.ses import ProxyState, create_proxy, parse_raw, sent_raw_messages

REGION = "us-east-1"
CONFIG_SET = "upsell-events"


@pytest.fixture(scope="module")
def ses_proxy(moto_url: str) -> Iterator[tuple[str, ProxyState]]:
    state = ProxyState(upstream=moto_url)
    url, stop = serve_in_thread(create_proxy(state))
    try:
        yield url, state
    finally:
        stop()


@pytest.fixture
def proxy(ses_proxy: tuple[str, ProxyState]) -> Iterator[ProxyState]:
    ses_proxy[1].reset()
    yield ses_proxy[1]
    ses_proxy[1].reset()


@pytest.fixture
def sender_address(moto_url: str) -> str:
    """A from address on a domain verified in SES, unique per test."""
    domain = f"sales-{uuid.uuid4().hex[:8]}.example.com"
    ses = boto3.client(
        "sesv2",
        region_name=REGION,
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    ses.create_email_identity(EmailIdentity=domain)
    ses.close()
    return f"upsell@{domain}"


@pytest.fixture
def block(ses_proxy: tuple[str, ProxyState], sender_address: str) -> SesEmailSender:
    return SesEmailSender(
        region_name=REGION,
        from_address=sender_address,
        from_name="Acme Upsell Team",
        configuration_set=CONFIG_SET,
        aws_access_key_id=SecretStr("testing-key-id"),
        aws_secret_access_key=SecretStr("testing-secret-key"),
        endpoint_url=ses_proxy[0],
        read_timeout_s=5,
    )


@pytest.fixture
def saved_block(block: SesEmailSender) -> Iterator[SesEmailSender]:
    """The block saved as `upsell-ses` for one test (documents are global on the session's test server)."""
    block.save("upsell-ses", overwrite=True)
    yield block
    SesEmailSender.delete("upsell-ses")


def _draft(to: str) -> EmailDraft:
    alert = UsageAlert(event_id="evt-draft", account_id="12345", metric_type="trade_volume")
    source = FixtureSource()
    usage, contract = source.fetch_usage(alert), source.fetch_contract("12345")
    draft = compose_email(
        usage=usage,
        contract=contract,
        plan=RuleBasedPlanner().plan(usage, contract).plan,
        reply_links={a: f"http://127.0.0.1:8000/reply/{a}-{'x' * 200}" for a in ("yes", "no", "maybe")},
        unsubscribe_url=f"http://127.0.0.1:8000/unsubscribe/{'t' * 300}",
        sender_name="Acme Upsell Team",
        sender_postal_address="Acme Corp, 1 Market Street, San Francisco, CA 94105",
    )
    return draft.model_copy(update={"to": to})


def _send(client: SesEmailClient, draft: EmailDraft, idempotency_key: str) -> str:
    """Build the message as the step does (From the client's identity) and send it."""
    message = build_message(draft, from_address=client.from_address, from_name=client.from_name)
    return client.send(message, idempotency_key=idempotency_key)


def _recipient() -> str:
    return f"buyer-{uuid.uuid4().hex[:10]}@customer.example.com"


def _messages_to(moto_url: str, recipient: str) -> list[dict[str, Any]]:
    return [m for m in sent_raw_messages(moto_url) if recipient in m["destinations"]]


@flow(name="send-email-check")
def _send_flow(alert: UsageAlert, draft: EmailDraft) -> EmailResult:
    """Run the real send_email_draft task (idempotency guard and retry policy) inside a flow run."""
    return configured(send_email_draft)(alert, draft)


def _task_state_names(flow_state: State) -> list[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id]))
        )
        assert len(runs) == 1
        return [s.name for s in sorted(client.read_task_run_states(runs[0].id), key=lambda s: s.timestamp)]


def _alert() -> UsageAlert:
    return UsageAlert(event_id=f"evt-{uuid.uuid4().hex[:12]}", account_id="12345", metric_type="trade_volume")


def _record(data_dir: Path, event_id: str) -> dict[str, Any]:
    store = SqliteOpportunityStore(data_dir / "upsell.db")
    try:
        record = store.get_record(event_id, EMAIL_STEP)
    finally:
        store.close()
    assert record is not None
    return record


def test_raw_message_keeps_both_parts_unsubscribe_headers_and_configuration_set(
    block: SesEmailSender, proxy: ProxyState, moto_url: str, sender_address: str
) -> None:
    recipient = _recipient()
    draft = _draft(recipient)

    message_id = _send(block.get_client(), draft, "evt-1-email")

    [sent] = _messages_to(moto_url, recipient)
    assert sent["id"] == message_id
    message = parse_raw(sent["raw_data"])
    assert message["Subject"] == draft.subject
    assert message["From"] == f"Acme Upsell Team <{sender_address}>"
    assert message["To"] == recipient
    assert message["List-Unsubscribe"] == f"<{draft.unsubscribe_url}>"  # long URL kept whole, not encoded
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message[IDEMPOTENCY_HEADER] == "evt-1-email"
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    assert draft.reply_links["yes"] in text.get_content()
    assert draft.reply_links["yes"] in html.get_content()
    assert "1 Market Street" in text.get_content()  # the sender's postal address in the footer
    # What went over the wire: the configuration set and the from address as parameters, raw MIME content.
    [request] = proxy.sends()
    assert request["json"]["ConfigurationSetName"] == CONFIG_SET
    assert request["json"]["FromEmailAddress"] == f"Acme Upsell Team <{sender_address}>"
    assert request["json"]["Destination"] == {"ToAddresses": [recipient]}
    assert base64.b64decode(request["json"]["Content"]["Raw"]["Data"]).startswith(b"From: ")


def test_secrets_stay_out_of_the_block_repr(block: SesEmailSender) -> None:
    assert "testing-secret-key" not in repr(block) and "testing-key-id" not in repr(block)
    assert "testing-secret-key" not in repr(block.get_client())


def test_task_records_the_message_id_and_never_sends_twice(
    saved_block: SesEmailSender, proxy: ProxyState, moto_url: str, data_dir: Path
) -> None:
    alert, recipient = _alert(), _recipient()

    first = _send_flow(alert, _draft(recipient))
    again = _send_flow(alert, _draft(recipient))  # a re-run of the same event (new flow run)

    [sent] = _messages_to(moto_url, recipient)
    assert (first.status, first.message_id, first.provider) == ("sent", sent["id"], "SesEmailClient")
    assert (again.status, again.message_id) == ("already_sent", sent["id"])
    assert len(proxy.sends()) == 1
    record = _record(data_dir, alert.event_id)
    assert (record["status"], record["result"]) == ("done", {"message_id": sent["id"]})


@pytest.mark.parametrize(
    ("status", "error_type"), [(500, "InternalFailure"), (429, "TooManyRequestsException"), (400, "Throttling")]
)
def test_transient_errors_release_the_claim_and_the_task_retries(
    saved_block: SesEmailSender, proxy: ProxyState, moto_url: str, data_dir: Path, status: int, error_type: str
) -> None:
    alert, recipient = _alert(), _recipient()
    proxy.fail.append((status, error_type))

    state = _send_flow(alert, _draft(recipient), return_state=True)

    assert state.is_completed(), state.message
    result = state.result()
    [sent] = _messages_to(moto_url, recipient)
    assert (result.status, result.message_id) == ("sent", sent["id"])
    assert len(proxy.sends()) == 2  # botocore did not retry on its own; the task did, once
    assert _task_state_names(state).count("AwaitingRetry") == 1
    record = _record(data_dir, alert.event_id)
    assert (record["status"], record["attempts"]) == ("done", 2)


def test_throttling_is_transient_and_a_rejected_message_is_permanent(block: SesEmailSender, proxy: ProxyState) -> None:
    client = block.get_client()
    proxy.fail.extend([(429, "TooManyRequestsException"), (400, "Throttling"), (400, "MessageRejected")])
    errors = []
    for _ in range(3):
        with pytest.raises(ClientError) as caught:
            _send(client, _draft(_recipient()), "k")
        errors.append(caught.value)
    assert [e.response["Error"]["Code"] for e in errors] == [
        "TooManyRequestsException",
        "Throttling",
        "MessageRejected",
    ]
    assert [is_permanent(e) for e in errors] == [False, False, True]
    assert len(proxy.sends()) == 3  # one request per send: no hidden botocore retries


def test_unverified_sender_is_rejected_and_not_retried(
    block: SesEmailSender, proxy: ProxyState, moto_url: str, data_dir: Path
) -> None:
    unverified = block.model_copy(update={"from_address": f"upsell@unverified-{uuid.uuid4().hex[:6]}.example.com"})
    unverified.save("upsell-ses", overwrite=True)
    try:
        alert, recipient = _alert(), _recipient()
        state = _send_flow(alert, _draft(recipient), return_state=True)
    finally:
        SesEmailSender.delete("upsell-ses")

    assert state.is_failed()
    with pytest.raises(ClientError, match="MessageRejected"):
        state.result()
    assert len(proxy.sends()) == 1
    assert "AwaitingRetry" not in _task_state_names(state)
    assert _messages_to(moto_url, recipient) == []
    assert _record(data_dir, alert.event_id)["status"] == "released"  # certainly not sent: may be tried later


def test_read_timeout_after_sending_is_an_unknown_outcome_never_resent(
    block: SesEmailSender, proxy: ProxyState, moto_url: str, data_dir: Path
) -> None:
    slow = block.model_copy(update={"read_timeout_s": 0.5})
    slow.save("upsell-ses", overwrite=True)
    try:
        alert, recipient = _alert(), _recipient()
        proxy.late_s = 2.0  # SES accepts the email, the answer arrives after the client gave up

        first = _send_flow(alert, _draft(recipient))
        again = _send_flow(alert, _draft(recipient))
    finally:
        SesEmailSender.delete("upsell-ses")

    assert first.status == "unknown" and first.message_id is None
    assert again.status == "unknown"
    assert len(_messages_to(moto_url, recipient)) == 1  # it did go out, once
    assert len(proxy.sends()) == 1  # and was not sent again
    record = _record(data_dir, alert.event_id)
    assert record["status"] == "unknown" and "unknown outcome" in record["error"]


def test_read_timeout_raises_send_outcome_unknown(block: SesEmailSender, proxy: ProxyState) -> None:
    proxy.late_s = 2.0
    client = block.model_copy(update={"read_timeout_s": 0.5}).get_client()
    with pytest.raises(SendOutcomeUnknown):
        _send(client, _draft(_recipient()), "evt-timeout-email")


def test_connection_closed_after_sending_is_an_unknown_outcome(block: SesEmailSender) -> None:
    """A server that reads the whole request and hangs up without answering: SES may have taken the email."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def read_then_hang_up() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            )
            while len(body) < length:
                body += conn.recv(65536)
            received.append(body)

    thread = threading.Thread(target=read_then_hang_up, daemon=True)
    thread.start()
    host, port = listener.getsockname()
    client = block.model_copy(update={"endpoint_url": f"http://{host}:{port}"}).get_client()
    try:
        with pytest.raises(SendOutcomeUnknown):
            _send(client, _draft(_recipient()), "evt-closed-email")
    finally:
        thread.join(timeout=5)
        listener.close()
    assert len(received) == 1  # the whole request went out, once
