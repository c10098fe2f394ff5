"""Block for Slack, where the sales team hears about each upsell."""

from __future__ import annotations

import time
from pathlib import Path

from prefect.blocks.core import Block
from pydantic import Field, SecretStr
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.web import SlackResponse

from blocks.interfaces import PermanentError, SlackPost
from blocks.limits import RetryAfter, VendorRateLimited, request_timeout, retry_after, retry_after_seconds
from blocks.local import append_record

RATE_LIMIT = "upsell-slack"

#: Slack errors that no retry can fix (bad token, missing scope, unknown or archived channel, bad blocks).
PERMANENT_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "missing_scope",
        "not_allowed_token_type",
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "restricted_action",
        "invalid_blocks",
        "invalid_blocks_format",
        "msg_too_long",
        "no_text",
    }
)


class SlackRateLimited(VendorRateLimited):
    """Slack kept answering `ratelimited` (or asked for a longer wait than we allow): retry the step later."""


class SlackNotifier:
    """Posts upsell summaries to a channel with a bot token."""

    def __init__(
        self, client: WebClient, channel: str, *, max_rate_limit_retries: int = 3, max_retry_after_s: float = 30.0
    ) -> None:
        self.client = client
        self.timeout_s: float = client.timeout
        self.channel = channel
        self.max_rate_limit_retries = max_rate_limit_retries
        self.max_retry_after_s = max_retry_after_s

    def __repr__(self) -> str:
        return f"SlackNotifier(channel={self.channel!r}, base_url={self.client.base_url!r})"

    def post(self, message: SlackPost) -> tuple[str, str]:
        """Post the summary; returns (channel id, message ts)."""
        channel = message.channel or self.channel

        def attempt() -> SlackResponse | RetryAfter:
            # this request ends with the running step at the latest (see request_timeout); urllib takes float
            # seconds, slack-sdk's hint says int
            self.client.timeout = request_timeout(self.timeout_s)  # type: ignore[assignment]
            try:
                return self.client.chat_postMessage(channel=channel, text=message.text, blocks=message.blocks)
            except SlackApiError as exc:
                error = exc.response.get("error", "") if isinstance(exc.response.data, dict) else ""
                if exc.response.status_code == 429 or error == "ratelimited":
                    return RetryAfter(retry_after_seconds(_retry_after_header(exc)), cause=exc)
                if error in PERMANENT_ERRORS:
                    raise PermanentError(f"Slack refused chat.postMessage: {error}") from exc
                raise

        response = retry_after(
            attempt,
            rate_limit=RATE_LIMIT,
            max_retries=self.max_rate_limit_retries,
            max_wait_s=self.max_retry_after_s,
            vendor="Slack",
            gave_up=SlackRateLimited,
        )
        return str(response["channel"]), str(response["ts"])


def _retry_after_header(exc: SlackApiError) -> str | None:
    """The answer's Retry-After (slack-sdk keeps header names as sent, and may hold a value as a list)."""
    for name, value in (exc.response.headers or {}).items():
        if name.lower() == "retry-after":
            return str(value[0] if isinstance(value, list) else value)
    return None


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


class LocalSlackRecorder:
    """Appends each Slack summary to `slack.jsonl` instead of posting it."""

    def __init__(self, path: Path, channel: str = "#sales-upsell") -> None:
        self.path = path
        self.channel = channel

    def __repr__(self) -> str:
        return f"LocalSlackRecorder({str(self.path)!r})"

    def post(self, message: SlackPost) -> tuple[str, str]:
        ts = f"{time.time():.6f}"
        channel = message.channel or self.channel
        append_record(self.path, {"channel": channel, "ts": ts, "text": message.text, "blocks": message.blocks})
        return channel, ts
