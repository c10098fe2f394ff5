"""Vendor rate limits as Prefect global concurrency limits: created by `ensure_rate_limits`, taken by each client."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client

from blocks import AnthropicCredentials, SlackCredentials, ZoomCredentials
from blocks.interfaces import SlackPost
from blocks.limits import VENDOR_RATES, RateLimitSlotUnavailable, VendorRate, acquire_rate_limit, ensure_rate_limits
from blocks.sources import FixtureSource
from flows.models import UsageAlert
from tasks.content.admission import plan_problem
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.slack_api import FakeSlack
from tests.fakes.zoom_api import FakeZoom


@pytest.fixture
def prefect() -> Iterator[SyncPrefectClient]:
    """A Prefect client; every upsell-* limit is deleted afterwards (other tests expect none)."""
    with get_client(sync_client=True) as client:
        yield client
        for name in VENDOR_RATES:
            try:
                client.delete_global_concurrency_limit_by_name(name)
            except Exception:  # noqa: S110 - not created by this test
                pass


def active_slots(client: SyncPrefectClient, name: str) -> int:
    return client.read_global_concurrency_limit_by_name(name).active_slots


def test_ensure_rate_limits_sizes_one_limit_per_vendor(prefect):
    ensure_rate_limits(prefect)
    ensure_rate_limits(prefect)  # idempotent: updates in place

    limits = {name: prefect.read_global_concurrency_limit_by_name(name) for name in VENDOR_RATES}
    assert set(limits) == {"upsell-anthropic", "upsell-slack", "upsell-zoom", "upsell-ses"}
    assert limits["upsell-slack"].limit == 1 and limits["upsell-slack"].slot_decay_per_second == 1.0
    assert limits["upsell-anthropic"].slot_decay_per_second == pytest.approx(50 / 60)
    assert limits["upsell-zoom"].slot_decay_per_second == 10.0
    assert limits["upsell-ses"].slot_decay_per_second == 1.0


def test_missing_limit_is_skipped_and_full_limit_refuses(prefect):
    acquire_rate_limit("upsell-anthropic")  # no such limit: no wait, no error

    # A limit that refills almost never: slots are counted, not timed.
    slow = {name: VendorRate(burst=10, per_second=0.001, source="test") for name in VENDOR_RATES}
    ensure_rate_limits(prefect, slow)
    slack_api, anthropic_api, zoom_api = FakeSlack().start(), FakeAnthropic().start(), FakeZoom().start()
    try:
        slack = SlackCredentials(bot_token=slack_api.token, base_url=slack_api.api_url).get_client()
        message = SlackPost(text="hi", blocks=[])
        slack_api.rate_limit_next(retry_after=0)
        slack.post(message)
        slack.post(message)
        assert active_slots(prefect, "upsell-slack") == 3  # one slot per request, the rate-limited retry too

        anthropic_api.fail_next(status=500)
        source = FixtureSource()
        alert = UsageAlert(event_id="evt-rl", account_id="12345", metric_type="trade_volume")
        planner = AnthropicCredentials(api_key=anthropic_api.api_key, base_url=anthropic_api.base_url).get_client()
        result = planner.plan(source.fetch_usage(alert), source.fetch_contract("12345"), review=plan_problem)
        assert result.planner == "claude"
        assert active_slots(prefect, "upsell-anthropic") == 2  # the SDK's own retry took a slot as well

        zoom = ZoomCredentials(
            account_id=zoom_api.account_id,
            client_id="cid-ratelimits",
            client_secret=zoom_api.client_secret,
            api_base_url=zoom_api.api_base_url,
            oauth_base_url=zoom_api.base_url,
        ).get_client()
        zoom_api.client_id = "cid-ratelimits"
        zoom.create_meeting(topic="t", start_time=datetime(2030, 1, 2, 15, tzinfo=UTC), invitee="a@b.c", agenda="")
        assert active_slots(prefect, "upsell-zoom") == 2  # token + meeting

        ensure_rate_limits(prefect, {"upsell-ses": VendorRate(burst=1, per_second=0.001, source="test")})
        acquire_rate_limit("upsell-ses")
        with pytest.raises(RateLimitSlotUnavailable):  # not a TimeoutError: nothing was sent
            acquire_rate_limit("upsell-ses", timeout_s=0.3)
    finally:
        for fake in (slack_api, anthropic_api, zoom_api):
            fake.stop()
