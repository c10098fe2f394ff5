"""Slack summaries through the real slack-sdk WebClient against the fake Slack Web API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prefect import flow
from slack_sdk.errors import SlackApiError

from blocks.interfaces import PermanentError, SlackPost
from blocks.slack import SlackCredentials, SlackNotifier, SlackRateLimited
from blocks.sources import FixtureSource
from flows.models import AutomationLevel, EmailResult, PlanResult, UpsellPlan, UsageAlert
from tasks.post_slack_summary import post_slack_summary
from tasks.runtime.policy import configured, is_permanent
from tests.fakes.slack_api import FakeSlack

MESSAGE = SlackPost(text="Upsell: Growth -> Professional", blocks=[{"type": "divider"}])


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(fake_server: FakeSlack) -> FakeSlack:
    fake_server.reset()
    fake_server.messages.clear()
    return fake_server


def notifier(fake: FakeSlack, **fields) -> SlackNotifier:
    return SlackCredentials(bot_token=fake.token, channel="#sales-upsell", base_url=fake.api_url, **fields).get_client()


def test_happy_path_posts_blocks_to_the_channel(fake):
    channel, ts = notifier(fake).post(MESSAGE)

    (posted,) = fake.messages
    assert (channel, ts) == (posted["channel_id"], posted["ts"])
    assert posted["channel"] == "#sales-upsell" and posted["text"] == MESSAGE.text
    assert posted["blocks"] == MESSAGE.blocks
    assert fake.received[0].headers["authorization"] == "Bearer xoxb-fake"


def test_ratelimited_waits_for_retry_after(fake):
    fake.rate_limit_next(retry_after=1)
    notifier(fake).post(MESSAGE)

    first, second = fake.requests_to("chat.postMessage")
    assert second.at - first.at >= 0.95
    assert len(fake.messages) == 1


def test_ratelimited_retries_are_bounded(fake):
    fake.rate_limit_next(retry_after=1, times=3)
    with pytest.raises(SlackRateLimited) as caught:
        notifier(fake, max_rate_limit_retries=1).post(MESSAGE)
    assert len(fake.received) == 2 and not is_permanent(caught.value)


def test_slack_errors_are_sorted_into_permanent_and_transient(fake):
    fake.fail_next(status=200, payload="channel_not_found")
    with pytest.raises(PermanentError, match="channel_not_found"):
        notifier(fake).post(MESSAGE)
    with pytest.raises(PermanentError, match="invalid_auth"):
        SlackCredentials(bot_token="xoxb-wrong", base_url=fake.api_url).get_client().post(MESSAGE)

    fake.fail_next(status=500)
    with pytest.raises(SlackApiError) as caught:
        notifier(fake).post(MESSAGE)
    assert not is_permanent(caught.value)
    assert len(fake.received) == 3 and not fake.messages  # no SDK-level retry of a possibly delivered post


def test_slow_answer_is_a_timeout(fake):
    fake.slow_next(2)
    with pytest.raises(TimeoutError):  # the idempotency guard records the outcome as unknown, never reposts
        notifier(fake, timeout_s=1).post(MESSAGE)
    # One attempt, abandoned at the client's timeout (the fake answers after 2 s). No timer here: the wait for
    # the shared upsell-slack rate-limit slot before the post depends on the tests that posted just before.
    assert len(fake.received) == 1


@flow(name="slack-step-probe")
def _post_like_the_upsell_flow(alert: UsageAlert):
    """Calls the real Slack step the way the upsell flow does (return_state=True) and returns its state."""
    contract = FixtureSource().fetch_contract(alert.account_id)
    plan = UpsellPlan(
        recommended_plan="Professional",
        estimated_value=30000,
        justification="j",
        features=[],
        roi_analysis="r",
        risk_assessment="x",
    )
    state = configured(post_slack_summary)(
        alert,
        AutomationLevel.FULL_AUTOMATION,
        contract,
        PlanResult(plan=plan, planner="claude"),
        EmailResult(status="sent"),
        {},
        return_state=True,
    )
    return state.is_completed(), state.name


def test_a_failed_post_fails_only_its_step(fake, event_id):
    block = SlackCredentials(bot_token=fake.token, channel="#sales-upsell", base_url=fake.api_url)
    block.save("upsell-slack", overwrite=True)
    try:
        alert = UsageAlert(event_id=event_id, account_id="12345", metric_type="trade_volume")
        fake.fail_next(status=500, times=10)
        assert _post_like_the_upsell_flow(alert) == (False, "Failed")
        assert len(fake.received) == 4  # first try + the task's 3 retries, then the flow carries on

        fake.reset()
        fake.fail_next(status=200, payload="not_in_channel")
        alert2 = alert.model_copy(update={"event_id": event_id + "-2"})
        assert _post_like_the_upsell_flow(alert2) == (False, "Failed")
        assert len(fake.received) == 1  # permanent: not retried

        fake.reset()
        assert _post_like_the_upsell_flow(alert2) == (True, "Completed")
        assert "12345" in fake.messages[-1]["text"]
    finally:
        SlackCredentials.delete("upsell-slack")
