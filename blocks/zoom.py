"""Block for Zoom, where follow-up meetings are booked."""

from __future__ import annotations

import httpx
from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from tasks.policy import cap_request_timeout
from tasks.zoom_client import ZoomClient


class ZoomCredentials(Block):
    """A Zoom Server-to-Server OAuth app (account id, client id and secret) that books the follow-up meetings."""

    _block_type_name = "Upsell Zoom Credentials"
    _block_type_slug = "upsell-zoom-credentials"
    _description = "Server-to-Server OAuth app (scope meeting:write:meeting:admin) booking follow-up meetings."

    account_id: str = Field(description="Account ID of the Server-to-Server OAuth app.")
    client_id: str = Field(description="Client ID of the app.")
    client_secret: SecretStr = Field(description="Client secret of the app.")
    api_base_url: str = Field(default="https://api.zoom.us/v2", description="Zoom REST API base URL.")
    oauth_base_url: str = Field(default="https://zoom.us", description="Zoom OAuth base URL.")
    meeting_duration_min: int = Field(default=30, ge=5, le=600)
    timeout_s: float = Field(default=30.0, gt=0, description="Timeout of one API request.")
    max_rate_limit_retries: int = Field(default=3, ge=0, le=10, description="Retries of 429 answers.")

    def get_client(self) -> ZoomClient:
        http = httpx.Client(
            base_url=self.api_base_url.rstrip("/"),
            timeout=self.timeout_s,
            headers={"Accept": "application/json", "User-Agent": "upsell/0.1"},
            event_hooks={"request": [cap_request_timeout]},  # each request also ends with the running step's
        )
        return ZoomClient(
            http,
            oauth_base_url=self.oauth_base_url,
            account_id=self.account_id,
            client_id=self.client_id,
            client_secret=self.client_secret.get_secret_value(),
            duration_min=self.meeting_duration_min,
            max_rate_limit_retries=self.max_rate_limit_retries,
        )
