"""The reply-timeouts flow: a scheduled sweep that ends unanswered waits as a normal outcome."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow
from prefect.runtime import flow_run

from tasks.close_expired_waits import close_expired_waits
from tasks.runtime.policy import configured


def sweep_run_name() -> str:
    """`reply-timeouts-sweep-YYYYMMDD-HHMMSS` (its scheduled time, UTC): the run list says what each run was."""
    started = flow_run.scheduled_start_time or datetime.now(UTC)
    return f"reply-timeouts-sweep-{started.astimezone(UTC):%Y%m%d-%H%M%S}"


@flow(name="reply-timeouts", flow_run_name=sweep_run_name)
def reply_timeouts(now: datetime | None = None, limit: int = 500) -> list[str]:
    """Resume upsell waits past their deadline with `no_reply` (or a timed-out approval)."""
    return configured(close_expired_waits)(now, limit)
