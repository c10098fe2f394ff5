"""Blocks for the HTTP usage and CRM sources."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any, Literal

import httpx
from prefect.blocks.core import Block
from pydantic import BaseModel, Field, SecretStr

from blocks.interfaces import PermanentError
from blocks.limits import cap_request_timeout
from flows.models import STABLE_GROWTH, ContractData, Severity, UsageAlert, UsageData


@cache
def _fixture_accounts() -> dict[str, Any]:
    return json.loads(resources.files("blocks").joinpath("fixtures/accounts.json").read_text())


def _trend(growth: float) -> str:
    if growth > STABLE_GROWTH:
        return "increasing"
    if growth < -STABLE_GROWTH:
        return "decreasing"
    return "stable"


def growth_between(current: float, previous: float | None) -> float | None:
    """Period-over-period growth as a ratio (111 -> 150 is 0.3514, 91 -> 88 is -0.033); None when there is no
    previous figure, or it is 0 or negative (growth from nothing is no percentage)."""
    if previous is None or previous <= 0:
        return None
    return (current - previous) / previous


def _same_series(reported: float, current: float) -> bool:
    """Whether the alert's reading and the source's current figure can be of one series (within a factor of 2)."""
    if current <= 0:
        return reported == current
    return 0.5 <= reported / current <= 2.0


def severity_for_overage(over: float) -> Severity:
    """How severe an overage found by a scan is: >= 100 % critical, >= 25 % high, else medium."""
    if over >= 1.0:
        return Severity.CRITICAL
    if over >= 0.25:
        return Severity.HIGH
    return Severity.MEDIUM


def build_usage(
    alert: UsageAlert, current: float, previous: float | None, threshold: float, period: str, extra: dict[str, Any]
) -> UsageData:
    """UsageData from raw figures; the alert's own value and threshold win when it reported them.

    The growth compares the source's current figure with its previous one: one series, read together. The
    alert's value is a reading taken elsewhere; set against the source's previous figure it once gave
    "decreasing -100%" for an alert of 300 on an account whose source reads 88,000 (previous 91,000). When the
    alert's reading cannot be of the source's series (off by more than a factor of 2), or there is no previous
    figure (or 0), no growth is claimed: growth 0, "stable", and no `previous_usage`, so no trend is said.
    """
    reported = alert.current_value if alert.current_value is not None else current
    threshold = alert.threshold if alert.threshold is not None else threshold
    growth = growth_between(current, previous) if _same_series(reported, current) else None
    exceeded = (reported - threshold) / threshold if threshold else 0.0
    return UsageData(
        account_id=alert.account_id,
        current_usage=reported,
        usage_trend=_trend(growth or 0.0),  # type: ignore[arg-type]
        usage_period=period,  # type: ignore[arg-type]
        threshold_exceeded=round(exceeded, 4),
        metric_type=alert.metric_type,
        growth_rate=round(growth or 0.0, 4),
        additional_context={
            "threshold": threshold,
            "previous_usage": previous if growth is not None else None,
            **extra,
        },
    )


class FixtureSource:
    """Usage and contracts from the bundled demo accounts (12345, 23456, 34567, 45678, 56789).

    Any other account gets deterministic synthetic figures derived from its id, marked `synthetic`, so that
    load tests and demos with fresh ids still run without a CRM.
    """

    def __repr__(self) -> str:
        return "FixtureSource(bundled demo accounts)"

    def _account(self, account_id: str) -> dict[str, Any]:
        known = _fixture_accounts().get(account_id)
        if known is not None:
            return known
        seed = int(hashlib.sha256(account_id.encode()).hexdigest()[:8], 16)
        tiers = [("Starter", 12000), ("Growth", 30000), ("Professional", 60000)]
        plan, spend = tiers[seed % len(tiers)]
        return {
            "company_name": f"Account {account_id}",
            "current_plan": plan,
            "current_spend": spend,
            "contract_end_date": "2027-12-31",
            "renewal_date": "2027-12-01",
            "contract_terms": {"billing": "annual", "currency": "USD", "synthetic": True},
            "contact_info": {"name": "Account Owner", "email": f"owner@account-{seed % 100000}.example.com"},
            "usage": {},
            "synthetic": True,
        }

    def fetch_usage(self, alert: UsageAlert) -> UsageData:
        account = self._account(alert.account_id)
        figures = account["usage"].get(alert.metric_type)
        if figures is None:
            base = float(alert.threshold or 100.0)
            current = float(alert.current_value if alert.current_value is not None else base * 1.2)
            figures = {"current": current, "previous": current / 1.2, "threshold": base, "period": "monthly"}
        extra = {"source": "fixture", "synthetic": bool(account.get("synthetic"))}
        return build_usage(
            alert, figures["current"], figures["previous"], figures["threshold"], figures["period"], extra
        )

    def scan(self, since: datetime, until: datetime) -> list[UsageAlert]:
        """One alert per demo account metric over its threshold, dated at the end of the window."""
        alerts = []
        for account_id, account in sorted(_fixture_accounts().items()):
            for metric, figures in sorted(account["usage"].items()):
                if figures["current"] <= figures["threshold"]:
                    continue
                over = (figures["current"] - figures["threshold"]) / figures["threshold"]
                alerts.append(
                    UsageAlert(
                        event_id=f"scan-{account_id}-{metric}-{until:%Y%m%d}",
                        account_id=account_id,
                        metric_type=metric,
                        current_value=figures["current"],
                        threshold=figures["threshold"],
                        severity=severity_for_overage(over),
                        occurred_at=until,
                        context={"source": "fixture-scan", "window_start": since.isoformat()},
                    )
                )
        return alerts

    def fetch_contract(self, account_id: str) -> ContractData:
        account = self._account(account_id)
        return ContractData(
            account_id=account_id,
            **{k: v for k, v in account.items() if k not in ("usage", "synthetic")},
        )


def _mapped(body: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """Rename source fields to ours: `mapping` is {our_field: their_field}."""
    out = dict(body)
    for ours, theirs in mapping.items():
        if theirs in body:
            out[ours] = body[theirs]
    return out


def _get_json(client: httpx.Client, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
    response = client.get(path, params=params)
    if response.status_code == 429 or response.status_code >= 500:
        response.raise_for_status()  # transient: the task retries it
    if response.status_code >= 400:
        raise PermanentError(f"GET {path} answered {response.status_code}: {response.text[:200]}")
    body = response.json()
    if not isinstance(body, dict):
        raise PermanentError(f"GET {path} answered a {type(body).__name__}, expected an object")
    return body


class RawUsage(BaseModel):
    """The figures a usage API answers."""

    current: float
    previous: float | None = None
    threshold: float = Field(default=0.0, ge=0)
    period: Literal["daily", "weekly", "monthly"] = "monthly"


class HttpUsageClient:
    """Usage from an HTTP API: `GET /usage/{account_id}?metric=...` answering current/previous/threshold."""

    def __init__(self, client: httpx.Client, field_mapping: dict[str, str] | None = None) -> None:
        self.client = client
        self.field_mapping = field_mapping or {}

    def __repr__(self) -> str:
        return f"HttpUsageClient({self.client.base_url})"

    def scan(self, since: datetime, until: datetime) -> list[UsageAlert]:
        """Alerts the usage API reports for the window: `GET /usage/alerts?since=&until=` -> list of alerts."""
        response = self.client.get("/usage/alerts", params={"since": since.isoformat(), "until": until.isoformat()})
        response.raise_for_status()
        return [UsageAlert.model_validate(item) for item in response.json()]

    def fetch_usage(self, alert: UsageAlert) -> UsageData:
        body = _mapped(
            _get_json(self.client, f"/usage/{alert.account_id}", {"metric": alert.metric_type}), self.field_mapping
        )
        if "current_usage" in body:  # already in our shape; identity stays the alert's, whatever the source says
            return UsageData.model_validate({**body, "account_id": alert.account_id, "metric_type": alert.metric_type})
        raw = RawUsage.model_validate(body)  # a malformed answer is a ValidationError: not retried
        return build_usage(
            alert, raw.current, raw.previous, raw.threshold, raw.period, {"source": str(self.client.base_url)}
        )


class HttpCrmClient:
    """Contracts from an HTTP CRM API: `GET /contracts/{account_id}`."""

    def __init__(self, client: httpx.Client, field_mapping: dict[str, str] | None = None) -> None:
        self.client = client
        self.field_mapping = field_mapping or {}

    def __repr__(self) -> str:
        return f"HttpCrmClient({self.client.base_url})"

    def fetch_contract(self, account_id: str) -> ContractData:
        body = _mapped(_get_json(self.client, f"/contracts/{account_id}"), self.field_mapping)
        return ContractData.model_validate({**body, "account_id": account_id})


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
