"""The Claude, Slack and Zoom blocks: registered, saved as `upsell-<service>`, resolved to the real clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prefect import flow
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client

from blocks import AnthropicCredentials, SlackCredentials, ZoomCredentials
from blocks.anthropic import ClaudePlanner
from blocks.registry import resolve
from blocks.slack import SlackNotifier
from blocks.sources import FixtureSource
from blocks.zoom import ZoomClient
from flows.models import UsageAlert
from tasks.ask_claude_for_plan import ask_claude_for_plan
from tasks.runtime.policy import configured
from tasks.runtime.settings import get_settings
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.slack_api import FakeSlack
from tests.fakes.zoom_api import FakeZoom

BLOCKS: list[type[Block]] = [AnthropicCredentials, SlackCredentials, ZoomCredentials]


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeAnthropic, FakeSlack, FakeZoom]]:
    started = (FakeAnthropic().start(), FakeSlack().start(), FakeZoom(client_id="cid-blocks").start())
    yield started
    for fake in started:
        fake.stop()


def test_block_types_register_with_secret_fields():
    for cls in BLOCKS:
        cls.register_type_and_schema()
    with get_client(sync_client=True) as client:
        for cls in BLOCKS:
            schema = client.read_block_schema_by_checksum(cls._calculate_schema_checksum())
            assert schema.block_type.slug == cls.get_block_type_slug()
            assert (
                schema.fields["secret_fields"]
                == {
                    AnthropicCredentials: ["api_key"],
                    SlackCredentials: ["bot_token"],
                    ZoomCredentials: ["client_secret"],
                }[cls]
            )


@flow(name="claude-step-probe")
def _plan_like_the_upsell_flow(alert: UsageAlert):
    """Calls the real planning step; returns (completed?, planner or failure message)."""
    source = FixtureSource()
    usage, contract = source.fetch_usage(alert), source.fetch_contract(alert.account_id)
    state = configured(ask_claude_for_plan)(usage, contract, return_state=True)
    return (True, state.result().planner) if state.is_completed() else (False, state.message)


def test_saved_blocks_resolve_to_the_real_clients(fakes, event_id):
    anthropic_api, slack_api, zoom_api = fakes
    saved = {
        "upsell-anthropic": AnthropicCredentials(api_key=anthropic_api.api_key, base_url=anthropic_api.base_url),
        "upsell-slack": SlackCredentials(bot_token=slack_api.token, base_url=slack_api.api_url),
        "upsell-zoom": ZoomCredentials(
            account_id=zoom_api.account_id,
            client_id=zoom_api.client_id,
            client_secret=zoom_api.client_secret,
            api_base_url=zoom_api.api_base_url,
            oauth_base_url=zoom_api.base_url,
        ),
    }
    try:
        for name, block in saved.items():
            block.save(name, overwrite=True)

        settings = get_settings()
        planner, slack, zoom = resolve("planner", settings), resolve("slack", settings), resolve("zoom", settings)
        assert isinstance(planner.client, ClaudePlanner) and not planner.standin
        assert isinstance(slack.client, SlackNotifier) and not slack.standin
        assert isinstance(zoom.client, ZoomClient) and not zoom.standin
        assert "upsell-anthropic (AnthropicCredentials)" == planner.description

        alert = UsageAlert(event_id=event_id, account_id="12345", metric_type="trade_volume")
        assert _plan_like_the_upsell_flow(alert) == (True, "claude")

        # A wrong API key is a configuration error: the step fails at once, without the task's retries.
        AnthropicCredentials(api_key="sk-ant-revoked", base_url=anthropic_api.base_url).save(
            "upsell-anthropic", overwrite=True
        )
        anthropic_api.reset()
        completed, message = _plan_like_the_upsell_flow(alert.model_copy(update={"event_id": event_id + "-401"}))
        assert not completed and "AuthenticationError" in message
        assert len(anthropic_api.received) == 1
    finally:
        for name, block in saved.items():
            type(block).delete(name)
    assert all(resolve(service, get_settings()).standin for service in ("planner", "slack", "zoom"))
