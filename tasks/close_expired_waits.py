"""The reply-timeouts sweep: closes waits past their deadline so the runs end Completed, not Failed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import SetStateStatus

from flows.models import EXPIRED_WAIT_INPUT
from tasks.runtime.flow_runs import read_run_input, upsell_runs
from tasks.runtime.policy import FETCH_STEP, step_options
from tasks.runtime.waits import WaitDeadline, deadline_key


def expired_waits(now: datetime, limit: int = 500) -> list[tuple[Any, str, WaitDeadline]]:
    """(flow run, wait kind, deadline) of every paused upsell run whose wait deadline has passed."""
    found = []
    with get_client(sync_client=True) as client:
        for run in upsell_runs(client, [StateType.PAUSED], limit=limit):
            kind = run.state.state_details.pause_key if run.state else None
            if kind not in EXPIRED_WAIT_INPUT:
                continue
            raw = read_run_input(client, run.id, deadline_key(kind))
            if raw is None:
                continue
            deadline = WaitDeadline.model_validate(json.loads(raw))
            if deadline.deadline <= now:
                found.append((run, kind, deadline))
    return found


@task(**step_options("close_expired_waits", FETCH_STEP))
def close_expired_waits(now: datetime | None = None, limit: int = 500) -> list[str]:
    """Resume every expired wait with its timeout answer (`no_reply`, or a timed-out approval)."""
    logger = get_run_logger()
    now = now or datetime.now(UTC)
    closed = []
    expired = expired_waits(now, limit)
    with get_client(sync_client=True) as client:
        for run, kind, deadline in expired:
            response = client.resume_flow_run(run.id, run_input=EXPIRED_WAIT_INPUT[kind])
            if response.status == SetStateStatus.ACCEPT:
                closed.append(str(run.id))
                logger.info("Closed %s wait of %s (deadline %s)", kind, run.name, deadline.deadline.isoformat())
            else:  # answered meanwhile, or Prefect's own timeout already fired
                logger.info("Could not close %s wait of %s: %s", kind, run.name, response.status.value)
    logger.info("%d expired wait(s) closed", len(closed))
    return closed
