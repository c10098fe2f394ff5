"""The receiver's wire contract: the alert it accepts and the answers it gives."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flows.models import EVENT_ID_PATTERN, UsageAlert


class AlertPayload(BaseModel):
    """A usage alert as the metrics system posts it (strict: no coercion, no unknown fields)."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(pattern=EVENT_ID_PATTERN, description="1-200 chars of A-Za-z0-9._:- ; one upsell per id.")
    account_id: str = Field(min_length=1, max_length=100)
    metric_type: str = Field(min_length=1, max_length=100, examples=["trade_volume"])
    current_value: float = Field(strict=True, allow_inf_nan=False, description="A finite number.")
    threshold: float = Field(strict=True, allow_inf_nan=False, ge=0, description="A finite number >= 0.")
    severity: Literal["low", "medium", "high", "critical"]
    occurred_at: datetime | None = Field(default=None, description="ISO 8601; default: when received.")
    context: dict[str, Any] = Field(default_factory=dict, description="Free-form object passed to the flow.")

    def to_alert(self) -> UsageAlert:
        return UsageAlert.model_validate(self.model_dump(exclude_none=True))


def non_finite_path(value: Any, path: str) -> str | None:
    """The dotted path of the first NaN/Infinity inside `value` (JSON has no such numbers), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, dict):
        for key, item in value.items():
            found = non_finite_path(item, f"{path}.{key}")
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = non_finite_path(item, f"{path}.{index}")
            if found:
                return found
    return None


class AlertAnswer(BaseModel):
    """What the receiver answers to an alert (and, with more detail, to `GET /alerts/{event_id}`)."""

    event_id: str
    triggered: bool
    queued: bool = False
    duplicate: bool = False
    flow_run_id: str | None = None
    automation_level: str | None = None
    reason: str | None = Field(default=None, description="Why no upsell started: " + ", ".join(
        ["metric_not_eligible", "below_high_value_threshold", "cooldown", "open_upsell"]))
    detail: str | None = None
    open_event_id: str | None = Field(default=None, description="For open_upsell: the alert whose upsell is open.")


class AlertStatus(AlertAnswer):
    """What became of an alert: qualified or not and why, queued, its flow run and the run's current stage."""

    account_id: str
    status: Literal["received", "queued", "triggered", "attached", "cooldown", "not_qualified"]
    qualified: bool
    received_at: str
    run_state: str | None = None
    run_stage: str | None = None
    run_error: str | None = None


class ErrorAnswer(BaseModel):
    """A refused request: a code, the offending field (when there is one) and a readable reason."""

    error: str
    field: str | None = None
    detail: str
    errors: list[dict[str, Any]] = Field(default_factory=list)


class Refused(Exception):
    """A request refused with a JSON error naming the offending field (answered by the app's handler)."""

    def __init__(self, status_code: int, error: str, detail: str, field: str | None = None,
                 errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.answer = ErrorAnswer(error=error, field=field, detail=detail, errors=errors or [])
        self.headers = headers or {}  # e.g. the WWW-Authenticate challenge of a 401


class HealthStatus(BaseModel):
    """What /healthz tells anyone: up (the receiver keeps alerts, spooling them while Prefect is away) or down
    (it cannot: its own file cannot be read)."""

    status: Literal["up", "down"]


class Health(HealthStatus):
    """What /healthz tells a caller with the report's credentials."""

    signing: Literal["required", "disabled"]
    warning: str | None = None
    spool_depth: int
    prefect_api: Literal["up", "down", "unknown"]
    prefect_api_url: str


class RunSummary(BaseModel):
    """What a link page can say about the upsell its link answers, read from the flow run (each part may be
    unknown: the page then words it generally). Every text is cleaned as outgoing text, for it came from the CRM
    or the planner."""

    account_id: str = ""
    metric: str = Field(default="", description="The metric as people read it (`metric_label`), never its raw name.")
    recommended_plan: str = ""
    current_plan: str = ""
    company_name: str = ""
    estimated_value: float | None = None
