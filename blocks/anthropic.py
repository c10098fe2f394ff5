"""Block for Claude (the Anthropic Messages API), the upsell planner."""

from __future__ import annotations

import anthropic
from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from tasks.claude import ClaudePlanner, rate_limited, within_step


class AnthropicCredentials(Block):
    """Claude plans the upsell through the Anthropic Messages API."""

    _block_type_name = "Upsell Anthropic Credentials"
    _block_type_slug = "upsell-anthropic-credentials"
    _description = "API key and model of the Claude planner; the rule-based planner stands in without it."

    api_key: SecretStr = Field(description="Anthropic API key (console.anthropic.com > API keys).")
    model: str = Field(default="claude-sonnet-4-5", description="Model id of the planner.")
    base_url: str | None = Field(default=None, description="API base URL; None for https://api.anthropic.com.")
    max_tokens: int = Field(default=1024, ge=256, le=8192)
    max_value_ratio: float = Field(
        default=3.0, gt=0, description="Sane bound: a plan's estimated_value may be at most this x current spend."
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Timeout of one API request.")
    max_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="SDK retries of 408/409/429/5xx and connection errors (honours retry-after).",
    )

    def get_client(self) -> ClaudePlanner:
        client = anthropic.Anthropic(
            api_key=self.api_key.get_secret_value(),
            base_url=self.base_url or None,
            timeout=self.timeout_s,
            max_retries=self.max_retries,
            middleware=[rate_limited, within_step(self.timeout_s)],
        )
        return ClaudePlanner(client, model=self.model, max_tokens=self.max_tokens, max_value_ratio=self.max_value_ratio)
