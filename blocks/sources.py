"""Blocks for the HTTP usage and CRM sources."""

from __future__ import annotations

import httpx
from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from tasks.policy import cap_request_timeout
from tasks.sources import HttpCrmClient, HttpUsageClient


def _http_client(base_url: str, token: SecretStr | None, timeout_s: float) -> httpx.Client:
    headers = {"Accept": "application/json", "User-Agent": "upsell/0.1"}
    if token is not None and token.get_secret_value():
        headers["Authorization"] = f"Bearer {token.get_secret_value()}"
    # each request's timeout also ends with the running step's (see cap_request_timeout)
    return httpx.Client(
        base_url=base_url, headers=headers, timeout=timeout_s, event_hooks={"request": [cap_request_timeout]}
    )


class HttpUsageSource(Block):
    """Reads usage from an HTTP API (`GET /usage/{account_id}?metric=`)."""

    _block_type_name = "Upsell HTTP Usage Source"
    _block_type_slug = "upsell-http-usage-source"
    _description = "Usage figures for the upsell flow, read over HTTP with a bearer token."

    base_url: str = Field(description="Base URL of the usage API, e.g. https://metrics.example.com/api")
    token: SecretStr | None = Field(default=None, description="Bearer token.")
    field_mapping: dict[str, str] = Field(
        default_factory=dict, description="Our field -> the API's field, e.g. {'current': 'value'}."
    )
    timeout_s: float = Field(default=10.0, gt=0)

    def get_client(self) -> HttpUsageClient:
        return HttpUsageClient(_http_client(self.base_url, self.token, self.timeout_s), self.field_mapping)


class HttpCrmSource(Block):
    """Reads contracts from an HTTP CRM API (`GET /contracts/{account_id}`)."""

    _block_type_name = "Upsell HTTP CRM Source"
    _block_type_slug = "upsell-http-crm-source"
    _description = "Contracts for the upsell flow, read over HTTP with a bearer token."

    base_url: str = Field(description="Base URL of the CRM API.")
    token: SecretStr | None = Field(default=None, description="Bearer token.")
    field_mapping: dict[str, str] = Field(
        default_factory=dict, description="Our field -> the API's field, e.g. {'current_spend': 'arr'}."
    )
    timeout_s: float = Field(default=10.0, gt=0)

    def get_client(self) -> HttpCrmClient:
        return HttpCrmClient(_http_client(self.base_url, self.token, self.timeout_s), self.field_mapping)
