"""Block for Slack, where the sales team hears about each upsell."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr
from slack_sdk import WebClient

from tasks.slack_client import SlackNotifier


class SlackCredentials(Block):
    """A Slack bot token and the channel the upsell summaries go to."""

    _block_type_name = "Upsell Slack Credentials"
    _block_type_slug = "upsell-slack-credentials"
    _description = "Bot token (scopes chat:write, chat:write.public) and channel of the upsell summaries."

    bot_token: SecretStr = Field(description="Bot User OAuth Token (xoxb-...).")
    channel: str = Field(default="#sales-upsell", description="Channel name or id to post to.")
    base_url: str = Field(default="https://slack.com/api/", description="Slack Web API base URL (ends with '/').")
    timeout_s: int = Field(default=30, gt=0, description="Timeout of one API request, in seconds.")
    max_rate_limit_retries: int = Field(default=3, ge=0, le=10, description="Retries of `ratelimited` answers.")

    def get_client(self) -> SlackNotifier:
        base_url = self.base_url if self.base_url.endswith("/") else self.base_url + "/"
        # No SDK retry handlers: SlackNotifier honours Retry-After itself (taking a rate-limit slot per try), and a
        # connection retry after the request reached Slack would post twice.
        client = WebClient(
            token=self.bot_token.get_secret_value(), base_url=base_url, timeout=self.timeout_s, retry_handlers=[]
        )
        return SlackNotifier(client, self.channel, max_rate_limit_retries=self.max_rate_limit_retries)
