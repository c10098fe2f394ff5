"""Step 1: fetch the account's current usage."""

from __future__ import annotations

from prefect import task

from flows.models import UsageAlert, UsageData
from tasks.integrations import resolve
from tasks.policy import FETCH_TIMEOUT_S, step_options


@task(name="fetch_usage", **step_options(FETCH_TIMEOUT_S))
def fetch_usage(alert: UsageAlert) -> UsageData:
    """Fetch current usage of the alert's metric from the usage source."""
    return resolve("usage").client.fetch_usage(alert)
