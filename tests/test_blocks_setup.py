"""`upsell blocks create`: block documents saved from UPSELL_* variables, loaded back, secrets kept secret."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from prefect.blocks.core import Block

from blocks.mongo import MongoOpportunityStore
from blocks.registry import load_block
from blocks.ses import SesEmailSender
from blocks.sources import HttpCrmSource, HttpUsageSource
from deployments.blocks_setup import BlocksConfigError, create_blocks_from_env

SECRET_KEY = f"aws-secret-{uuid.uuid4().hex}"
MONGO_PASSWORD = f"pw{uuid.uuid4().hex}"
USAGE_TOKEN = f"usage-{uuid.uuid4().hex}"


@pytest.fixture
def cleanup() -> Iterator[list[tuple[type[Block], str]]]:
    saved: list[tuple[type[Block], str]] = []
    yield saved
    for cls, name in saved:
        cls.delete(name)


def test_saves_configured_services_and_skips_the_rest(cleanup: list[tuple[type[Block], str]]) -> None:
    environ = {
        "UPSELL_SES_REGION": "eu-west-1",
        "UPSELL_SES_FROM_ADDRESS": "upsell@acme.example",
        "UPSELL_SES_CONFIGURATION_SET": "upsell-events",
        "UPSELL_SES_ENDPOINT_URL": "http://127.0.0.1:5000",
        "UPSELL_AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "UPSELL_AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "UPSELL_SENDER_NAME": "Acme Growth Team",
        "UPSELL_MONGO_URI": f"mongodb://upsell:{MONGO_PASSWORD}@db.example:27017",
        "UPSELL_MONGO_DATABASE": "upsell_prod",
        "UPSELL_USAGE_BASE_URL": "http://metrics.example/api",
        "UPSELL_USAGE_TOKEN": USAGE_TOKEN,
        "UPSELL_USAGE_FIELD_MAPPING": '{"current": "value"}',
        "UPSELL_CRM_BASE_URL": "",  # empty means unset: no CRM block
        "UPSELL_SLACK_CHANNEL": "   ",
        "PATH": "/usr/bin",
    }

    saved = create_blocks_from_env(environ)
    cleanup.extend(
        [(SesEmailSender, "upsell-ses"), (MongoOpportunityStore, "upsell-mongo"), (HttpUsageSource, "upsell-usage")]
    )

    assert saved == ["upsell-ses", "upsell-mongo", "upsell-usage"]
    ses = SesEmailSender.load("upsell-ses")
    assert (ses.region_name, ses.from_address, ses.from_name) == (
        "eu-west-1",
        "upsell@acme.example",
        "Acme Growth Team",
    )
    assert (ses.configuration_set, ses.endpoint_url) == ("upsell-events", "http://127.0.0.1:5000")
    assert ses.aws_secret_access_key is not None and ses.aws_secret_access_key.get_secret_value() == SECRET_KEY
    mongo = MongoOpportunityStore.load("upsell-mongo")
    assert mongo.database == "upsell_prod" and mongo.collection == "opportunities"
    assert MONGO_PASSWORD in mongo.uri.get_secret_value()
    usage = HttpUsageSource.load("upsell-usage")
    assert usage.field_mapping == {"current": "value"}
    assert usage.token is not None and usage.token.get_secret_value() == USAGE_TOKEN
    for block in (ses, mongo, usage):
        shown = repr(block) + str(block) + block.model_dump_json()
        assert SECRET_KEY not in shown and MONGO_PASSWORD not in shown and USAGE_TOKEN not in shown
    # The flow finds them under the names it looks for; CRM stays on its stand-in.
    assert isinstance(load_block("email"), SesEmailSender)
    assert isinstance(load_block("store"), MongoOpportunityStore)
    assert load_block("crm") is None
    assert HttpCrmSource  # imported for the check above: its type stays unsaved


@pytest.mark.parametrize(
    ("environ", "missing"),
    [
        ({"UPSELL_SES_FROM_ADDRESS": "upsell@acme.example"}, "UPSELL_SES_REGION"),
        (
            {
                "UPSELL_SES_REGION": "eu-west-1",
                "UPSELL_SES_FROM_ADDRESS": "a@b.example",
                "UPSELL_AWS_ACCESS_KEY_ID": "x",
            },
            "UPSELL_AWS_SECRET_ACCESS_KEY",
        ),
        ({"UPSELL_MONGO_DATABASE": "upsell"}, "UPSELL_MONGO_URI"),
        ({"UPSELL_ZOOM_ACCOUNT_ID": "a", "UPSELL_ZOOM_CLIENT_ID": "b"}, "UPSELL_ZOOM_CLIENT_SECRET"),
        ({"UPSELL_USAGE_TOKEN": "t"}, "UPSELL_USAGE_BASE_URL"),
    ],
)
def test_half_configured_service_names_the_missing_variable(environ: dict[str, str], missing: str) -> None:
    with pytest.raises(ValueError, match=missing):
        create_blocks_from_env(environ)


def test_nothing_is_saved_when_any_service_is_invalid() -> None:
    environ = {
        "UPSELL_CRM_BASE_URL": "http://crm.example",  # fine on its own
        "UPSELL_USAGE_BASE_URL": "http://metrics.example",
        "UPSELL_USAGE_FIELD_MAPPING": "{not json",
    }
    with pytest.raises(BlocksConfigError, match="UPSELL_USAGE_FIELD_MAPPING"):
        create_blocks_from_env(environ)
    assert load_block("crm") is None


def test_empty_environment_saves_nothing() -> None:
    assert create_blocks_from_env({"HOME": "/root"}) == []


def test_claude_slack_and_zoom_blocks_from_env(cleanup: list[tuple[type[Block], str]]) -> None:
    from blocks.anthropic import AnthropicCredentials
    from blocks.slack import SlackCredentials
    from blocks.zoom import ZoomCredentials

    environ = {
        "UPSELL_ANTHROPIC_API_KEY": "sk-ant-test",
        "UPSELL_ANTHROPIC_MODEL": "claude-test-model",
        "UPSELL_ANTHROPIC_BASE_URL": "http://127.0.0.1:9001",
        "UPSELL_SLACK_BOT_TOKEN": "xoxb-test",
        "UPSELL_SLACK_CHANNEL": "#upsell-test",
        "UPSELL_SLACK_BASE_URL": "http://127.0.0.1:9002/api/",
        "UPSELL_ZOOM_ACCOUNT_ID": "acc",
        "UPSELL_ZOOM_CLIENT_ID": "cid",
        "UPSELL_ZOOM_CLIENT_SECRET": "zoom-secret",
        "UPSELL_ZOOM_API_BASE_URL": "http://127.0.0.1:9003/v2",
        "UPSELL_ZOOM_OAUTH_BASE_URL": "http://127.0.0.1:9003",
    }
    saved = create_blocks_from_env(environ)
    cleanup.extend(
        [
            (AnthropicCredentials, "upsell-anthropic"),
            (SlackCredentials, "upsell-slack"),
            (ZoomCredentials, "upsell-zoom"),
        ]
    )

    assert saved == ["upsell-anthropic", "upsell-slack", "upsell-zoom"]
    claude = AnthropicCredentials.load("upsell-anthropic")
    assert (claude.model, claude.base_url) == ("claude-test-model", "http://127.0.0.1:9001")
    slack = SlackCredentials.load("upsell-slack")
    assert (slack.channel, slack.base_url, slack.bot_token.get_secret_value()) == (
        "#upsell-test",
        "http://127.0.0.1:9002/api/",
        "xoxb-test",
    )
    zoom = ZoomCredentials.load("upsell-zoom")
    assert (zoom.account_id, zoom.client_id, zoom.api_base_url) == ("acc", "cid", "http://127.0.0.1:9003/v2")
    assert "zoom-secret" not in repr(zoom) and "xoxb-test" not in repr(slack) and "sk-ant-test" not in repr(claude)
