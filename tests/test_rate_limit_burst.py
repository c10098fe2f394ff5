"""A burst of upsell Slack posts stays under the vendor's rate thanks to the Prefect `upsell-slack` rate limit.

The fake Slack enforces a vendor-style limit (a post over VENDOR_RATE within any 1-second sliding window earns
HTTP 429 `ratelimited` with Retry-After). With the global concurrency limit sized to that rate, 40 concurrent
runs of the real `post_slack_summary` task all post without a single 429; without the limit, even 30 posts
draw 429s at twice that rate (which the client's Retry-After handling then absorbs). The vendor rate is set
below what concurrent task runs reach on this machine (about 10 posts in a second), so the limit is what keeps
the burst under it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.exceptions import ObjectNotFound
from prefect.futures import wait

from blocks.interfaces import SlackPost
from blocks.limits import VendorRate, ensure_rate_limits
from blocks.slack import RATE_LIMIT, SlackCredentials, SlackNotifier
from blocks.sources import FixtureSource
from flows.models import AutomationLevel, EmailResult, PlanResult, SlackResult, UpsellPlan, UsageAlert
from tasks.post_slack_summary import post_slack_summary
from tests.fakes.slack_api import FakeSlack

logger = logging.getLogger(__name__)

VENDOR_RATE = 5  # posts the fake Slack accepts per 1-second sliding window
BURST = 40
CONTROL_POSTS = 30
CONTROL_RATE = 10  # posts/s the fake allows in the control: 30 posts would have to take over 3 s to draw no 429
ACCOUNT = "12345"


@pytest.fixture
def slack_api() -> Iterator[FakeSlack]:
    fake = FakeSlack(rate_limit_per_second=VENDOR_RATE).start()
    yield fake
    fake.stop()


@pytest.fixture
def prefect() -> Iterator[SyncPrefectClient]:
    """A Prefect client; the `upsell-slack` limit is absent before and after (other tests expect none)."""
    with get_client(sync_client=True) as client:
        _delete_limit(client)
        yield client
        _delete_limit(client)


def _delete_limit(client: SyncPrefectClient) -> None:
    try:
        client.delete_global_concurrency_limit_by_name(RATE_LIMIT)
    except ObjectNotFound:
        pass


def max_per_window(times: Sequence[float], window_s: float = 1.0) -> int:
    """The most requests that arrived within any sliding window of `window_s`."""
    ordered, start, best = sorted(times), 0, 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


@flow(name="slack-burst-probe")
def _post_burst(prefix: str, count: int) -> list[tuple[str, SlackResult | None]]:
    """Submits the real Slack step once per alert, all at once, with the arguments the upsell flow passes."""
    contract = FixtureSource().fetch_contract(ACCOUNT)
    plan = UpsellPlan(
        recommended_plan="Professional",
        estimated_value=30000,
        justification="Usage is well over the Growth plan's threshold.",
        features=[],
        roi_analysis="r",
        risk_assessment="x",
    )
    futures = [
        post_slack_summary.submit(
            UsageAlert(event_id=f"{prefix}-{i:03d}", account_id=ACCOUNT, metric_type="trade_volume"),
            AutomationLevel.FULL_AUTOMATION,
            contract,
            PlanResult(plan=plan, planner="claude"),
            EmailResult(status="sent"),
            {},
        )
        for i in range(count)
    ]
    wait(futures)
    return [(f.state.name, f.state.result() if f.state.is_completed() else None) for f in futures]


def test_without_the_limit_the_same_vendor_answers_429(prefect):
    """The control: without the `upsell-slack` limit a burst outruns the vendor's rate, so the burst test can fail.

    The fake allows CONTROL_RATE posts/s here, well under what 30 concurrent posts reach even on a loaded machine.
    """
    slack_api = FakeSlack(rate_limit_per_second=CONTROL_RATE).start()
    try:
        _control_burst(slack_api)
    finally:
        slack_api.stop()


def _control_burst(slack_api: FakeSlack) -> None:
    notifier = SlackCredentials(bot_token=slack_api.token, base_url=slack_api.api_url).get_client()
    assert isinstance(notifier, SlackNotifier)
    message = SlackPost(text="burst", blocks=[])

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=CONTROL_POSTS) as pool:
        delivered = list(pool.map(lambda _: notifier.post(message), range(CONTROL_POSTS)))
    elapsed = time.monotonic() - started

    posts = [r.at for r in slack_api.requests_to("chat.postMessage")]
    logger.info(
        "control: %d posts in %.1fs, peak %d requests in any 1s window, %d answered 429",
        CONTROL_POSTS,
        elapsed,
        max_per_window(posts),
        len(slack_api.rate_limited_at),
    )
    assert len(slack_api.rate_limited_at) >= 1, "no post answered 429: the control cannot tell the limit from luck"
    # Retry-After is honoured: every post still gets through, once.
    assert len(delivered) == len(slack_api.messages) == CONTROL_POSTS


def test_burst_of_upsell_posts_draws_no_429_under_the_prefect_rate_limit(slack_api, prefect, event_id):
    ensure_rate_limits(prefect, {RATE_LIMIT: VendorRate(burst=1, per_second=VENDOR_RATE, source="fake Slack")})
    SlackCredentials(bot_token=slack_api.token, channel="#sales-upsell", base_url=slack_api.api_url).save(
        "upsell-slack", overwrite=True
    )
    try:
        started = time.monotonic()
        outcomes = _post_burst(event_id, BURST)
        elapsed = time.monotonic() - started
    finally:
        SlackCredentials.delete("upsell-slack")

    posts = [r.at for r in slack_api.requests_to("chat.postMessage")]
    peak = max_per_window(posts)
    logger.info(
        "burst: %d posts in %.1fs, %.1f posts/s over %.1fs at the fake, peak %d in any 1s window, %d answered 429",
        BURST,
        elapsed,
        (len(posts) - 1) / (max(posts) - min(posts)),
        max(posts) - min(posts),
        peak,
        len(slack_api.rate_limited_at),
    )
    assert [name for name, _ in outcomes] == ["Completed"] * BURST
    results = [result for _, result in outcomes]
    assert all(r is not None and r.posted and r.provider == "SlackNotifier" for r in results), results
    assert len(slack_api.messages) == BURST and len(posts) == BURST  # one request each: nothing was retried
    assert slack_api.rate_limited_at == [], f"{len(slack_api.rate_limited_at)} posts answered 429"
    assert peak <= VENDOR_RATE
