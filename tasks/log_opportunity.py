"""Step 8: record the opportunity in the opportunity store (idempotent upsert keyed by event id)."""

from __future__ import annotations

from prefect import get_run_logger, task

from blocks.registry import resolve
from flows.models import Opportunity
from tasks.runtime.policy import FETCH_STEP, step_options
from tasks.runtime.settings import get_settings


@task(**step_options("log_opportunity", FETCH_STEP))
def log_opportunity(opportunity: Opportunity) -> str:
    """Upsert the opportunity; logging the same event twice leaves one record."""
    store = resolve("store", get_settings()).client
    try:
        store.upsert_opportunity(opportunity)
    finally:
        store.close()
    get_run_logger().info("Opportunity %s logged (%s)", opportunity.opportunity_id, opportunity.status.value)
    return opportunity.opportunity_id
