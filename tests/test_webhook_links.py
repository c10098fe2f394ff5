"""Reply, approval and unsubscribe links against real suspended runs served by the session runner: GET changes
nothing, POST resumes once (twenty concurrent POSTs -> one resume), used/expired/forged links get clear pages,
and an unsubscribed contact's upsell ends `suppressed` without an email."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email import policy
from email.parser import BytesParser
from html import unescape

import httpx
import pytest
from fastapi import Request

from blocks.mongo import SqliteOpportunityStore
from blocks.sources import FixtureSource
from flows.models import UpsellOutcome
from tasks.runtime.links import LinkToken, sign_token, verify_token
from tests.support import outbox_email, read_run, wait_until_final, wait_until_paused
from tests.test_webhook_support import SECRET, alert, get_status, post_alert
from webhook.deps import get_gateway
from webhook.gateway import PrefectGateway
from webhook.serve import ReceiverThread
from webhook.settings import ReceiverSettings

TOKEN_RE = re.compile(r"https?://\S+?/(links|unsubscribe)/([A-Za-z0-9_-]+)")


@pytest.fixture(scope="module")
def receiver(runner, prefect_server, tmp_path_factory) -> Iterator[tuple[httpx.Client, ReceiverSettings]]:
    tmp = tmp_path_factory.mktemp("links-receiver")
    # the runner's data dir: the unsubscribe endpoint writes to the store the flow reads
    settings = ReceiverSettings(webhook_secrets=SECRET, data_dir=runner.data_dir, receiver_db=tmp / "receiver.db",
                                prefect_api_url=prefect_server,
                                prefect_timeout_s=30)  # a loaded CI machine must not turn a slow API into 503
    with ReceiverThread(settings) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        yield http, settings


def _token(settings: ReceiverSettings, run_id: str, wait: str, value: dict, ttl_s: int = 3600) -> str:
    link = LinkToken(flow_run_id=run_id, wait=wait, value=value, expires_at=int(time.time()) + ttl_s, nonce="t")
    return sign_token(link, settings.link_secret.get_secret_value())


def _email(runner, event_id: str):
    with outbox_email(runner.data_dir / "outbox", event_id).open("rb") as handle:
        return BytesParser(policy=policy.default).parse(handle)


def _email_links(runner, event_id: str, secret: str) -> tuple[dict[str, str], str, str]:
    """({answer: token}, unsubscribe token, List-Unsubscribe-Post) from the email the run wrote to the outbox."""
    message = _email(runner, event_id)
    text = message.get_body(preferencelist=("plain",)).get_content()
    replies = {verify_token(t, secret).value["reply"]: t for kind, t in TOKEN_RE.findall(text) if kind == "links"}
    unsubscribe = TOKEN_RE.search(message["List-Unsubscribe"]).group(2)
    return replies, unsubscribe, message["List-Unsubscribe-Post"]


def test_reply_and_approval_links(receiver, runner):
    http, settings = receiver
    payload = alert(severity="high")  # HYBRID: waits for the reply, then for a reviewer
    run_id = post_alert(http, payload).json()["flow_run_id"]
    wait_until_paused(run_id, "reply", timeout_s=90)
    replies, unsubscribe, one_click = _email_links(runner, payload["event_id"], settings.link_secret.get_secret_value())
    assert set(replies) == {"yes", "no", "maybe"} and one_click == "List-Unsubscribe=One-Click"
    assert http.get(f"/unsubscribe/{unsubscribe}").status_code == 200

    # GET (a mail scanner's prefetch) shows a confirmation page and changes nothing
    page = http.get(f"/links/{replies['yes']}")
    assert page.status_code == 200 and "<form method=post>" in page.text and "no-store" in page.headers["cache-control"]
    _assert_page_speaks_as_the_email(http, replies, _email(runner, payload["event_id"]), settings)
    time.sleep(1)
    assert read_run(run_id).state.state_details.pause_key == "reply"

    # twenty concurrent POSTs of one token: one resume, nineteen "already used"
    def click(_: int) -> int:
        with httpx.Client(base_url=str(http.base_url), timeout=60) as own:
            return own.post(f"/links/{replies['yes']}").status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(click, range(20)))
    assert sorted(codes) == [200] + [410] * 19, codes
    wait_until_paused(run_id, "review", timeout_s=60)
    used = http.get(f"/links/{replies['yes']}")
    assert used.status_code == 410 and "already used" in used.text

    # another answer to the same question: its page says so at once, without a button
    other = http.get(f"/links/{replies['no']}")
    assert other.status_code == 410 and "This was already answered" in other.text and "<form" not in other.text
    assert "Confirm your answer" not in other.text
    late = http.post(f"/links/{replies['no']}")
    assert late.status_code == 409 and "Nothing was changed" in late.text

    # forged, garbage, wrong-route and expired tokens
    forged = replies["maybe"][:-2] + ("AA" if not replies["maybe"].endswith("AA") else "BB")
    for bad in (forged, "not-a-token", "abc.def"):
        assert http.get(f"/links/{bad}").status_code == 403
        assert http.post(f"/links/{bad}").status_code == 403
    assert http.post(f"/links/{unsubscribe}").status_code == 403
    review = {"approved": True, "estimated_value": 4321.0, "note": "approved by the link test"}
    expired = _token(settings, run_id, "review", review, ttl_s=-10)
    assert http.get(f"/links/{expired}").status_code == 410
    response = http.post(f"/links/{expired}")
    assert response.status_code == 410 and "expired" in response.text
    assert read_run(run_id).state.state_details.pause_key == "review"
    waiting = get_status(http, payload["event_id"]).json()
    assert waiting["run_state"] == "Suspended" and waiting["run_stage"] == "Waiting Reply"  # reply in, review due

    approve = http.post(f"/links/{_token(settings, run_id, 'review', review)}")
    assert approve.status_code == 200, approve.text
    final = wait_until_final(run_id, timeout_s=60)
    assert final.state.is_completed(), final.state
    outcome = UpsellOutcome.model_validate(final.state.result())
    assert outcome.reply == "yes" and outcome.reviewer_note == "approved by the link test"
    status = get_status(http, payload["event_id"]).json()
    # the state's name tells the outcome (Completed type, named e.g. "Won"): the receiver reports it as Prefect has it
    assert status["run_state"] == final.state.name and status["run_stage"] == "Completed"


def _assert_page_speaks_as_the_email(http, replies, message, settings) -> None:
    """Each reply page says who asks (the email's signature), about the plan the email recommends, with the
    email's own label for the answer, and the metric in words (never its raw name)."""
    email_text = message.get_body(preferencelist=("plain",)).get_content()
    labels = set()
    for answer, token in replies.items():
        words = unescape(re.sub(r"<[^>]+>", " ", http.get(f"/links/{token}").text))
        label = re.search(r"Your answer: (.+?)\.\s", words).group(1)
        assert label in email_text, (answer, label)  # the words of the button the customer pressed
        labels.add(label)
        plan = re.search(r"suggested the (.+?) plan, as your team's trade volume has grown\.", words).group(1)
        assert plan in message["Subject"] and plan in email_text
        assert settings.sender_name in words and settings.sender_postal_address in words
        assert "trade_volume" not in words
    assert len(labels) == 3


def test_one_click_unsubscribe_suppresses_the_next_upsell(receiver, runner):
    http, settings = receiver
    account = f"unsub-{uuid.uuid4().hex[:10]}"
    email = FixtureSource().fetch_contract(account).contact_email
    token = _token(settings, str(uuid.uuid4()), "unsubscribe", {"email": email}, ttl_s=365 * 86400)
    store = SqliteOpportunityStore(runner.data_dir / "upsell.db")
    try:
        page = http.get(f"/unsubscribe/{token}")
        assert page.status_code == 200 and "List-Unsubscribe" in page.text and not store.is_suppressed(email)
        assert http.post(f"/unsubscribe/{token}").status_code == 400  # not a one-click request
        assert not store.is_suppressed(email)
        expired = _token(settings, "r", "unsubscribe", {"email": email}, ttl_s=-1)
        assert http.post(f"/unsubscribe/{expired}", content=b"List-Unsubscribe=One-Click").status_code == 410
        assert http.post(f"/unsubscribe/{token[:-3]}xyz", content=b"List-Unsubscribe=One-Click").status_code == 403

        done = http.post(f"/unsubscribe/{token}", content=b"List-Unsubscribe=One-Click",
                         headers={"content-type": "application/x-www-form-urlencoded"})
        assert done.status_code == 200 and store.is_suppressed(email)
        assert http.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
        again = http.get(f"/unsubscribe/{token}")  # a second visit does not ask again
        assert again.status_code == 200 and "You are already unsubscribed" in again.text and "<form" not in again.text
    finally:
        store.close()

    payload = alert(account_id=account, severity="critical")
    run_id = post_alert(http, payload).json()["flow_run_id"]
    final = wait_until_final(run_id, timeout_s=90)
    outcome = UpsellOutcome.model_validate(final.state.result())
    assert outcome.status == "suppressed" and outcome.email_sent is False
    assert not list((runner.data_dir / "outbox").glob(f"{payload['event_id']}*"))


class BrokenGateway(PrefectGateway):
    """The receiver's gateway, but a resume fails in a way nobody planned for."""

    async def resume_wait(self, flow_run_id: str, wait: str, run_input: dict) -> None:
        raise RuntimeError("an unexpected failure")


def test_a_resume_that_fails_unexpectedly_leaves_the_link_usable(prefect_server, tmp_path):
    settings = ReceiverSettings(webhook_secrets=SECRET, data_dir=tmp_path, prefect_api_url=prefect_server)
    with ReceiverThread(settings) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        app = server.server.config.app

        def broken(request: Request) -> PrefectGateway:
            real = request.app.state.gateway
            return BrokenGateway(real.settings, real.client, real.api_url)

        path = f"/links/{_token(settings, str(uuid.uuid4()), 'reply', {'reply': 'yes'})}"
        app.dependency_overrides[get_gateway] = broken
        try:
            for _ in range(2):  # the second is not "already used": the first freed the link
                answer = http.post(path)
                assert answer.status_code == 503 and "Please try again" in unescape(answer.text), answer.text
                assert "the link still works" in unescape(answer.text)
        finally:
            app.dependency_overrides.clear()
        answer = http.post(path)  # the real gateway: the run does not exist, but the link was still usable
        assert answer.status_code == 410 and "no longer exists" in unescape(answer.text), answer.text
