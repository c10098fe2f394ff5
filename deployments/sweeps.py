"""The maintenance sweeps run only when they have work: `upsell serve` checks for it and creates a sweep run then.

Scheduled every minute, the `upsell-recovery` sweep filled the run list a sales rep reads (10 of 16 rows after ten
minutes, each finding nothing). The serving process instead asks the API the sweep's own question (which upsell
runs are dead, which waits are past their deadline: a read of runs and events, no flow run) and runs the sweep's
deployment only when the answer is not empty: one sweep run per piece of work, none while there is none. The
sweep itself is unchanged, and so is the zombie automation, which runs the recovery deployment for one silent run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.logging import get_logger

from flows.recovery import STALE_AFTER_S
from tasks.close_expired_waits import expired_waits
from tasks.recover_runs import find_dead_runs

#: How often the serving process looks for dead upsells (the interval of the former recovery schedule).
RECOVERY_CHECK_S = 60.0
#: A sweep run of the deployment in one of these states is on its way: no second one is created.
UNDER_WAY = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]

logger = get_logger("upsell.sweeps")


@dataclass(frozen=True)
class Sweep:
    """One sweep deployment (`flow/deployment`), how often its work is looked for, and what the look finds:
    the sweep run's parameters, or None when there is nothing to do."""

    deployment: str
    every_s: float
    work: Callable[[SyncPrefectClient, datetime], dict[str, Any] | None]


def dead_runs_work(client: SyncPrefectClient, now: datetime) -> dict[str, Any] | None:
    """The recovery sweep's parameters for the upsell runs dead now (those runs only), or None."""
    dead = find_dead_runs(client, now, STALE_AFTER_S)
    return {"flow_run_ids": [str(d.run.id) for d in dead]} if dead else None


def expired_waits_work(client: SyncPrefectClient, now: datetime) -> dict[str, Any] | None:
    """The reply-timeouts sweep's parameters when a wait is past its deadline (the sweep closes them all)."""
    return {} if expired_waits(now, limit=1) else None


def sweeps(recovery: str, reply_timeouts: str, reply_every_s: float) -> list[Sweep]:
    """The two sweeps `upsell serve` watches for: recovery every minute, reply timeouts every `reply_every_s`."""
    return [
        Sweep(recovery, RECOVERY_CHECK_S, dead_runs_work),
        Sweep(reply_timeouts, reply_every_s, expired_waits_work),
    ]


def run_if_work(sweep: Sweep, now: datetime | None = None) -> UUID | None:
    """Create a run of the sweep's deployment when it has work and none of its runs is already under way; the id of
    the run created, else None."""
    now = now or datetime.now(UTC)
    with get_client(sync_client=True) as client:
        parameters = sweep.work(client, now)
        if parameters is None:
            return None
        deployment = client.read_deployment_by_name(sweep.deployment)
        under_way = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=UNDER_WAY))),
            limit=1,
        )
        if under_way:
            return None
        run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
    logger.info("%s has work: flow run %s created", sweep.deployment, run.name)
    return run.id


def watch(watched: list[Sweep], stop: threading.Event, tick_s: float = 1.0) -> None:
    """Until `stop` is set: run each sweep that has work, looking every `every_s` of it (first one `every_s` in).

    A failed look (the API down, a timeout) is logged and tried again at the next interval: the serving process
    must outlive an API outage, and the sweep's work waits for it anyway."""
    clock = datetime.now(UTC).timestamp
    due = {sweep.deployment: clock() + sweep.every_s for sweep in watched}
    while not stop.wait(tick_s):
        for sweep in watched:
            if clock() < due[sweep.deployment]:
                continue
            due[sweep.deployment] = clock() + sweep.every_s
            try:
                run_if_work(sweep)
            except Exception:  # degrade on purpose: logged with its traceback, looked at again next interval
                logger.exception("Looking for work of %s failed; trying again in %.0f s", sweep.deployment,
                                 sweep.every_s)


def drop_schedules(deployment: str) -> int:
    """Delete the schedules of a sweep deployment an earlier version served on a schedule (a redeploy without
    schedules keeps them); how many were deleted."""
    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        for schedule in found.schedules:
            client.delete_deployment_schedule(found.id, schedule.id)
    return len(found.schedules)


def start_watching(watched: list[Sweep]) -> threading.Event:
    """Watch in a daemon thread of this process; set the event returned to stop."""
    stop = threading.Event()
    threading.Thread(target=watch, args=(watched, stop), name="upsell-sweep-watch", daemon=True).start()
    return stop
