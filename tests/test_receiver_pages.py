"""The receiver's pages as people see them, against the real receiver under uvicorn and the session's Prefect
server: link pages say who is asking and about which plan (read from the run through the Prefect API, with
general wording when it cannot be read), in the email's words; every answer carries the security headers; the
API docs work offline (every asset served by the receiver itself)."""

from __future__ import annotations

import base64
import hashlib
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.states import Completed

from tasks.content.email import ANSWER_LABELS
from tasks.runtime.links import LinkToken, sign_token
from tasks.runtime.waits import WaitDeadline, deadline_key
from tests.test_webhook_support import SECRET
from webhook.gateway import summary_from
from webhook.ports import free_port
from webhook.serve import ReceiverThread
from webhook.settings import ReceiverSettings

LINK_SECRET = "receiver-pages-link-secret-0123456789"
SENDER = "Acme Growth Team"
ADDRESS = "Acme Corp, 1 Market Street, San Francisco, CA 94105"


@flow(name="receiver-pages-test-run")
def recorded_run(alert: dict[str, Any]) -> None:
    """Stands for an upsell run: only its parameters and wait records are read (it is never executed)."""


def _settings(tmp: Any, prefect_api_url: str) -> ReceiverSettings:
    return ReceiverSettings(
        webhook_secrets=SECRET, link_secret=LINK_SECRET, data_dir=tmp, receiver_db=tmp / "receiver.db",
        prefect_api_url=prefect_api_url, sender_name=SENDER, sender_postal_address=ADDRESS,
    )


@pytest.fixture(scope="module")
def http(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    settings = _settings(tmp_path_factory.mktemp("pages-receiver"), prefect_server)
    with ReceiverThread(settings) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def _run(steps: dict[str, Any] | None) -> str:
    """A finished flow run whose parameters hold an alert and, unless `steps` is None, a reply-wait record with
    those step results, as an upsell run keeps them (`tasks.runtime.waits.open_wait`)."""
    account = f"acct-{uuid.uuid4().hex[:8]}"
    alert = {"event_id": f"evt-{account}", "account_id": account, "metric_type": "trade_volume"}
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(recorded_run, parameters={"alert": alert}, state=Completed())
        if steps is not None:
            record = WaitDeadline(kind="reply", deadline=datetime.now(UTC) + timedelta(days=1), steps=steps)
            client.create_flow_run_input(run.id, deadline_key("reply"), record.model_dump_json())
    return str(run.id)


PLANNED = {
    "contract": {"account_id": "a", "company_name": "Globex", "current_plan": "Growth", "contract_end_date": "",
                 "renewal_date": "", "current_spend": 30000},
    "plan": {"plan": {"recommended_plan": "Enterprise", "estimated_value": 42000, "justification": "j",
                      "features": [], "roi_analysis": "", "risk_assessment": ""}, "planner": "rule-based"},
}


def _link(run_id: str, wait: str, value: dict[str, Any], route: str = "links") -> str:
    token = LinkToken(flow_run_id=run_id, wait=wait, value=value, expires_at=int(time.time()) + 3600,
                      nonce=uuid.uuid4().hex)
    return f"/{route}/{sign_token(token, LINK_SECRET)}"


def _text(response: httpx.Response) -> str:
    """The page's words as a reader sees them (tags dropped, entities decoded)."""
    return unescape(re.sub(r"<[^>]+>", " ", response.text))


# ---- what the pages say ----


def test_reply_page_says_who_asks_about_which_plan_in_the_emails_words(http: httpx.Client) -> None:
    run_id = _run(PLANNED)
    for answer in ("yes", "no", "maybe"):
        page = http.get(_link(run_id, "reply", {"reply": answer}))
        assert page.status_code == 200, page.text
        text, label = _text(page), ANSWER_LABELS[answer]
        assert f"{SENDER} suggested the Enterprise plan, as your team's trade volume has grown." in text
        assert f"Your answer: {label}." in text and f"Send \u201c{label}\u201d" in text
        assert f"From {SENDER}, {ADDRESS}." in text
        assert "trade_volume" not in page.text and "None" not in text
    assert ANSWER_LABELS["maybe"] == "Maybe later"  # the email's words: the page no longer says "tell me more"
    assert "tell me more" not in _text(http.get(_link(run_id, "reply", {"reply": "maybe"})))


def test_approval_page_names_the_upsell_it_decides(http: httpx.Client) -> None:
    run_id = _run(PLANNED)
    with get_client(sync_client=True) as client:
        account = client.read_flow_run(uuid.UUID(run_id)).parameters["alert"]["account_id"]
    approve = http.get(_link(run_id, "review", {"approved": True, "estimated_value": 4321.0, "note": ""}))
    text = _text(approve)
    assert approve.status_code == 200
    assert f"Upsell for {account} (Globex): from Growth to Enterprise after a trade volume alert." in text
    assert "Approve this upsell opportunity (estimated value $4,321/yr)?" in text
    reject = _text(http.get(_link(run_id, "approve-email", {"approved": False, "subject": "", "body_text": ""})))
    # an email approval carries no value of its own: the plan's estimate is shown
    assert "Reject the upsell" in reject and "Reject sending the upsell email (estimated value $42,000/yr)?" in reject


def test_pages_fall_back_to_general_words_when_the_run_cannot_be_read(http: httpx.Client) -> None:
    missing = str(uuid.uuid4())  # no such run
    page = http.get(_link(missing, "reply", {"reply": "yes"}))
    assert page.status_code == 200
    assert f"{SENDER} suggested a plan with more room for your team." in _text(page)
    review = http.get(_link(missing, "approve-opportunity", {"approved": True, "estimated_value": 10.0}))
    assert review.status_code == 200 and "could not be read just now" in _text(review)
    unplanned = http.get(_link(_run(None), "reply", {"reply": "no"}))  # a run that recorded no wait yet
    assert "suggested a plan with more room, as your team's trade volume has grown." in _text(unplanned)


def test_pages_do_not_wait_for_a_prefect_api_that_is_down(tmp_path: Any) -> None:
    settings = _settings(tmp_path, f"http://127.0.0.1:{free_port('127.0.0.1')}/api")  # nothing listens there
    with ReceiverThread(settings) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        started = time.monotonic()
        page = client.get(_link(str(uuid.uuid4()), "reply", {"reply": "maybe"}))
        assert page.status_code == 200 and "a plan with more room" in _text(page)
        assert time.monotonic() - started < 5


def test_unsubscribe_page_says_who_sends_the_emails(http: httpx.Client) -> None:
    page = http.get(_link("r", "unsubscribe", {"email": "jo@example.com"}, route="unsubscribe"))
    text = _text(page)
    assert f"Stop emails from {SENDER} about plan upgrades to jo@example.com?" in text
    assert f"From {SENDER}, {ADDRESS}." in text and "upsell" not in text.lower()


def test_run_data_is_cleaned_before_a_page_shows_it() -> None:
    hostile = {
        "contract": {"company_name": "Visit http://evil.example now", "current_plan": "<script>x</script>"},
        "plan": {"plan": {"recommended_plan": "Pro\u202e", "estimated_value": "lots"}},
    }
    record = WaitDeadline(kind="reply", deadline=datetime.now(UTC), steps=hostile).model_dump_json()
    summary = summary_from({"alert": {"account_id": ["not text"], "metric_type": "apiCalls"}},
                           ["not a record", '{"kind": 3}', record])
    assert summary.company_name == "" and summary.current_plan == "" and summary.account_id == ""
    assert summary.recommended_plan == "Pro" and summary.estimated_value is None and summary.metric == "api calls"
    assert summary_from({}, []).model_dump() == summary_from({"alert": None}, ["[]"]).model_dump()


# ---- security headers ----


def _policy(response: httpx.Response) -> dict[str, str]:
    """The response's Content-Security-Policy as {directive: sources}."""
    parts = (part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";"))
    return {part[0]: part[1] if len(part) > 1 else "" for part in parts}


def _hashes(pattern: str, html: str) -> set[str]:
    return {f"'sha256-{base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()}'"
            for block in re.findall(pattern, html, re.S)}


def test_every_answer_forbids_framing_and_sniffing(http: httpx.Client) -> None:
    run_id = _run(PLANNED)
    answers = [http.get(path) for path in (
        "/healthz", "/openapi.json", "/docs", "/redoc", "/static-offline-docs/swagger-ui.css", "/no-such-page",
        _link(run_id, "reply", {"reply": "yes"}), "/links/forged.token",
    )] + [http.post("/alerts", content=b"{}", headers={"content-type": "application/json"})]
    for answer in answers:
        assert answer.headers["x-frame-options"] == "DENY", answer.request.url
        assert answer.headers["x-content-type-options"] == "nosniff"
        policy = _policy(answer)
        assert policy["frame-ancestors"] == "'none'" and policy["default-src"] == "'none'", answer.request.url
        assert "http" not in answer.headers["content-security-policy"]  # nothing from another site, ever

    page = http.get(_link(run_id, "reply", {"reply": "yes"}))
    policy = _policy(page)
    assert "script-src" not in policy and policy["form-action"] == "'self'"  # a link page runs no script at all
    assert set(policy["style-src"].split()) == _hashes(r"<style>(.*?)</style>", page.text) != set()


def test_docs_policy_allows_only_their_own_start_up_script(http: httpx.Client) -> None:
    docs = http.get("/docs")
    scripts = set(_policy(docs)["script-src"].split())
    assert scripts == {"'self'"} | _hashes(r"<script>(.*?)</script>", docs.text) and len(scripts) == 2
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts


# ---- API docs without internet ----


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_use_only_assets_the_receiver_serves(http: httpx.Client, path: str) -> None:
    page = http.get(path)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assets += re.findall(r"""(?:url:\s*|spec-url=)["']([^"']+)["']""", page.text)  # the spec it loads
    assert len(assets) >= 3, assets
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), f"{path} loads {asset} from elsewhere"
        answer = http.get(urljoin(str(http.base_url), asset))
        assert answer.status_code == 200 and answer.content, asset
    assert "cdn" not in page.text.lower() and "fonts.googleapis" not in page.text
