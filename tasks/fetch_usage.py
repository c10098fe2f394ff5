"""Step 1: fetch the account's current usage."""

from __future__ import annotations

from prefect import task
from pydantic import ValidationError

from blocks.registry import resolve
from flows.models import UsageAlert, UsageData
from tasks.content.admission import accept_usage, malformed
from tasks.runtime.policy import FETCH_STEP, step_options
from tasks.runtime.settings import get_settings


@task(**step_options("fetch_usage", FETCH_STEP))
def fetch_usage(alert: UsageAlert) -> UsageData:
    """Fetch current usage of the alert's metric from the usage source (identity from the alert, numbers checked)."""
    try:
        usage = resolve("usage", get_settings()).client.fetch_usage(alert)
    except ValidationError as exc:  # a malformed answer: the upsell stops for a human, not retried
        raise malformed(exc, "usage") from None
    return accept_usage(usage, alert, max_value=get_settings().max_usage_value)
