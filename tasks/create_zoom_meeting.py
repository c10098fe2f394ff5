"""Step 7: book a follow-up meeting with the customer (only when the reply is yes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import get_run_logger, task

from blocks.registry import resolve
from flows.models import ContractData, Meeting, UpsellPlan, UsageAlert
from tasks.runtime.once import run_once
from tasks.runtime.policy import SEND_STEP, step_options
from tasks.runtime.settings import get_settings

MEETING_STEP = "create_zoom_meeting"


def next_business_slot(after: datetime, lead_time_h: float) -> datetime:
    """The first 15:00 UTC on a weekday at least `lead_time_h` hours after `after`."""
    slot = (after + timedelta(hours=lead_time_h)).astimezone(UTC)
    slot = slot.replace(hour=15, minute=0, second=0, microsecond=0) + (
        timedelta(days=1) if slot.hour >= 15 else timedelta()
    )
    while slot.weekday() >= 5:
        slot += timedelta(days=1)
    return slot


@task(**step_options("create_zoom_meeting", SEND_STEP))
def create_zoom_meeting(alert: UsageAlert, contract: ContractData, plan: UpsellPlan) -> Meeting | None:
    """Create the follow-up meeting once per event; None when an earlier attempt's outcome is unknown."""
    logger = get_run_logger()
    settings = get_settings()
    scheduler = resolve("zoom", settings).client
    topic = f"{contract.company_name or alert.account_id}: {plan.recommended_plan} walkthrough"
    start = next_business_slot(datetime.now(UTC), settings.meeting_lead_time_h)
    agenda = f"Discuss moving from {contract.current_plan} to {plan.recommended_plan}."
    store = resolve("store", settings).client
    try:
        done = run_once(
            store,
            alert.event_id,
            MEETING_STEP,
            lambda: scheduler.create_meeting(
                topic=topic, start_time=start, invitee=contract.contact_email, agenda=agenda
            ).model_dump(mode="json"),
        )
    finally:
        store.close()
    if done.status == "unknown":
        logger.warning("Meeting for event %s has an unknown outcome; flagged for a human", alert.event_id)
        return None
    meeting = Meeting.model_validate(done.result)
    logger.info("Meeting %s at %s: %s", meeting.meeting_id, meeting.start_time.isoformat(), meeting.join_url)
    return meeting
