"""Step 8: record the opportunity in the opportunity store (idempotent upsert keyed by event id)."""

from __future__ import annotations

from prefect import get_run_logger, task

from blocks.registry import resolve
from flows.models import Opportunity
from tasks.runtime.policy import FETCH_TIMEOUT_S, step_options


@task(name="log_opportunity", **step_options(FETCH_TIMEOUT_S))
def log_opportunity(opportunity: Opportunity) -> str:
    """Upsert the opportunity; logging the same event twice leaves one record."""
    store = resolve("store").client
    try:
        store.upsert_opportunity(opportunity)
    finally:
        store.close()
    get_run_logger().info("Opportunity %s logged (%s)", opportunity.opportunity_id, opportunity.status.value)
    return opportunity.opportunity_id
