"""Backfill steps: scan the usage source for a window's alerts and submit each to the receiver, the same
idempotent front door the metrics system uses (dedupe, one open upsell per account, cooldown, spool)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

import httpx
from prefect import task
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger, get_run_logger
from pydantic import BaseModel

from blocks.registry import resolve
from flows.models import UsageAlert, qualification
from tasks.runtime.policy import FETCH_STEP, step_options
from tasks.runtime.settings import AlertIntakeSettings, get_settings
from tasks.runtime.signing import SIGNATURE_HEADER, sign

Verdict = Literal["triggered", "queued", "already_handled", "not_qualifying", "would_trigger"]


class Submission(BaseModel):
    """What became of one scanned alert."""

    event_id: str
    account_id: str
    verdict: Verdict
    flow_run_id: str | None = None
    detail: str = ""


def run_logger() -> Any:
    """The run logger inside a flow or task run; a plain logger when called from the CLI."""
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("upsell.backfill")


@task(**step_options("scan_usage_alerts", FETCH_STEP))
def scan_usage_alerts(since: datetime, until: datetime) -> list[UsageAlert]:
    """Alerts of the window from the usage source (fixture accounts by default)."""
    source = resolve("usage", get_settings()).client
    scan = getattr(source, "scan", None)
    if scan is None:
        raise TypeError(f"{type(source).__name__} cannot list alerts for a window")
    alerts = scan(since, until)
    run_logger().info("Scanned %s..%s: %d alert(s)", since.isoformat(), until.isoformat(), len(alerts))
    return alerts


def alert_body(alert: UsageAlert) -> bytes:
    """The alert as the receiver takes it (`POST /alerts`): figures as numbers, 0 when not reported."""
    fields = alert.model_dump(mode="json")
    return json.dumps({
        "event_id": alert.event_id, "account_id": alert.account_id, "metric_type": alert.metric_type,
        "current_value": float(alert.current_value or 0.0), "threshold": float(alert.threshold or 0.0),
        "severity": alert.severity.value, "occurred_at": fields["occurred_at"], "context": fields["context"],
    }).encode()


@task(**step_options("submit_alert", FETCH_STEP))
def submit_alert(alert: UsageAlert, dry_run: bool = False) -> Submission:
    """Post the alert, signed, to the receiver (or, in a dry run, say what it would become)."""
    settings = AlertIntakeSettings()
    base = {"event_id": alert.event_id, "account_id": alert.account_id}
    secret = settings.secret_values()[0] if settings.signing_required else None
    with httpx.Client(base_url=settings.public_base_url, timeout=30) as client:
        path = f"/alerts/{alert.event_id}"
        # the receiver signs a status read over its path, an alert over its body
        known = client.get(path, headers={SIGNATURE_HEADER: sign(path.encode(), secret)} if secret else {})
        if known.status_code == 200:
            body = known.json()
            return Submission(**base, verdict="already_handled", flow_run_id=body.get("flow_run_id"),
                              detail=str(body.get("status")))
        if known.status_code != 404:
            known.raise_for_status()
        qualifies, reason, detail = qualification(
            alert, settings.qualifying_metrics, settings.qualifying_severities, settings.high_value_threshold
        )
        if not qualifies:
            return Submission(**base, verdict="not_qualifying", detail=f"{reason}: {detail}")
        if dry_run:
            return Submission(**base, verdict="would_trigger")
        raw = alert_body(alert)
        headers = {"Content-Type": "application/json"}
        if secret:
            headers[SIGNATURE_HEADER] = sign(raw, secret)
        answer = client.post("/alerts", content=raw, headers=headers)
        answer.raise_for_status()
        body = answer.json()
    if body.get("triggered") and not body.get("duplicate"):
        verdict: Verdict = "triggered"
    elif body.get("queued"):
        verdict = "queued"
    elif body.get("reason") in (None, "cooldown", "open_upsell") or body.get("duplicate"):
        verdict = "already_handled"
    else:
        verdict = "not_qualifying"
    return Submission(**base, verdict=verdict, flow_run_id=body.get("flow_run_id"),
                      detail=str(body.get("reason") or body.get("detail") or ""))
