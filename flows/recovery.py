"""The upsell-recovery flow: a scheduled sweep that runs dead upsells again and repairs waits nobody can answer."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from prefect import flow
from prefect.runtime import flow_run

from tasks.recover_runs import recover_dead_runs
from tasks.runtime.policy import configured

#: A run is dead after this long without a heartbeat (3 x the 30 s heartbeat the serving processes use).
STALE_AFTER_S = 90.0
MAX_ATTEMPTS = 3
BACKOFF_S = 30.0


def recovery_run_name() -> str:
    """`recovery-sweep-YYYYMMDD-HHMMSS` (its scheduled time, UTC): the run list says what each run was."""
    started = flow_run.scheduled_start_time or datetime.now(UTC)
    return f"recovery-sweep-{started.astimezone(UTC):%Y%m%d-%H%M%S}"


@flow(name="upsell-recovery", flow_run_name=recovery_run_name)
def upsell_recovery(
    stale_after_s: float = STALE_AFTER_S,
    max_attempts: int = MAX_ATTEMPTS,
    backoff_s: float = BACKOFF_S,
    flow_run_ids: list[UUID] | None = None,
) -> dict[str, str]:
    """Reschedule crashed, heartbeat-less or stuck-Pending upsells (bounded, with backoff); repair waits without
    their input schema; fail a run after its last attempt, with the reason."""
    return configured(recover_dead_runs)(stale_after_s, max_attempts, backoff_s, flow_run_ids)
