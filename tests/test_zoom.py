"""Zoom meetings through httpx against the fake Zoom OAuth and meetings API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from blocks.interfaces import SendOutcomeUnknown
from blocks.zoom import ZoomCredentials, ZoomRateLimited
from tasks.runtime.policy import is_permanent
from tests.fakes.zoom_api import FakeZoom

START = datetime(2030, 1, 2, 15, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeZoom]:
    fake = FakeZoom().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(fake_server: FakeZoom) -> FakeZoom:
    fake_server.reset()
    fake_server.meetings.clear()
    # Tokens are cached per process by client id: a fresh app per test keeps the tests independent.
    fake_server.client_id = f"cid-{uuid.uuid4().hex[:8]}"
    return fake_server


def block(fake: FakeZoom, **fields) -> ZoomCredentials:
    app = {"account_id": fake.account_id, "client_id": fake.client_id, "client_secret": fake.client_secret}
    return ZoomCredentials(**{**app, **fields}, api_base_url=fake.api_base_url, oauth_base_url=fake.base_url)


def book(fake: FakeZoom, **fields):
    client = block(fake, **fields).get_client()
    return client.create_meeting(topic="Acme: Professional", start_time=START, invitee="dana@example.com", agenda="a")


def test_happy_path_and_token_cached_across_clients(fake):
    first = book(fake)
    second = book(fake)  # a new client, as each task run builds one from the block

    assert fake.token_requests() == 1
    token = fake.requests_to("/oauth/token")[0]
    assert token.query == {"grant_type": "account_credentials", "account_id": fake.account_id}
    assert token.headers["authorization"].startswith("Basic ")
    assert first.provider == "zoom" and first.join_url == fake.meetings[0]["join_url"]
    assert first.meeting_id != second.meeting_id and first.start_time == START
    sent = fake.requests_to("/users/me/meetings")[0].body
    assert sent["type"] == 2 and sent["start_time"] == "2030-01-02T15:00:00Z" and sent["topic"] == "Acme: Professional"
    assert sent["settings"]["meeting_invitees"] == [{"email": "dana@example.com"}]


def test_401_refreshes_the_token_once(fake):
    book(fake)
    fake.expire_tokens()
    meeting = book(fake)

    assert fake.token_requests() == 2 and len(fake.meetings) == 2
    assert meeting.join_url == fake.meetings[-1]["join_url"]


def test_expired_token_is_renewed_before_use(fake):
    fake.expires_in = 30  # less than the safety margin: the cached token is already stale
    try:
        book(fake)
        book(fake)
    finally:
        fake.expires_in = 3599
    assert fake.token_requests() == 2 and len(fake.requests_to("/users/me/meetings")) == 2


def test_429_waits_for_retry_after_and_is_bounded(fake):
    book(fake)
    fake.rate_limit_next(retry_after=1)
    book(fake)
    calls = fake.requests_to("/users/me/meetings")
    assert len(calls) == 3 and calls[2].at - calls[1].at >= 0.95

    fake.rate_limit_next(retry_after=1, times=2)
    with pytest.raises(ZoomRateLimited) as caught:
        book(fake, max_rate_limit_retries=1)
    assert not is_permanent(caught.value)


def test_errors_are_permanent_transient_or_unknown(fake):
    with pytest.raises(httpx.HTTPStatusError) as caught:
        book(fake, client_secret="wrong")
    assert caught.value.response.status_code == 400 and is_permanent(caught.value)  # bad credentials: no retry

    book(fake)
    fake.fail_next(status=500)
    with pytest.raises(httpx.HTTPStatusError) as caught:
        book(fake)
    assert not is_permanent(caught.value)

    fake.slow_next(2)
    with pytest.raises(SendOutcomeUnknown):  # the request went out: never resent blindly
        book(fake, timeout_s=0.5)
    fake.malformed_next()
    with pytest.raises(SendOutcomeUnknown):
        book(fake)
