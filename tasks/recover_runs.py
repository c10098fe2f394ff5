"""The recovery sweep: finds upsell runs whose process died and runs them again, or ends them with the reason.

What counts as dead, on Prefect's own records:
- **Crashed**: Prefect (or a person, or an earlier version of the zombie automation) marked the run Crashed.
- **Running without a heartbeat**: the engine emits `prefect.flow-run.heartbeat` every
  `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds while a run executes; none for `stale_after_s` means its process
  died (works without the automation, e.g. where the server runs no triggers service; the automation runs this
  sweep for one run the moment it falls silent).
- **Pending for longer than `stale_after_s`**: a runner or worker took the run and died before starting it.
- **Waiting without its input schema**: Prefect sets the Suspended/Paused state before it saves the wait's
  schema, so a kill in between leaves a wait nothing can answer; the schema is saved again from the wait's
  RunInput (its defaults, without the run's initial data).

A dead run is rescheduled (`Scheduled` at now + backoff, doubling) so any runner serving the deployment runs it
again from the top: its wait records and idempotency records mean finished steps are not repeated, and a send
whose outcome is unknown ends `needs_review`; a run rescheduled while it waited waits again (`flows.inputs`).
A run that is Paused, Suspended or finished is never touched (a wait without its schema only gets the schema
back), and a run whose state changed after it was found dead (answered, started, finished) is left alone.
The attempts are counted in a flow run input (`upsell-recovery-<n>`); after
`max_attempts` the run ends Failed with the reason in its state message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.input import RunInput
from prefect.states import Failed, Scheduled

from flows.models import WAIT_INPUTS
from tasks.runtime.flow_runs import read_run_input, upsell_runs
from tasks.runtime.policy import FETCH_STEP, step_options

EVENTS_PAGE = 50  # the events API answers at most 50 per page
RECOVERY_KEY = "upsell-recovery"
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
WATCHED = [StateType.CRASHED, StateType.RUNNING, StateType.PENDING, StateType.PAUSED]


@dataclass(frozen=True)
class DeadRun:
    """An upsell run that will not go on by itself, and why."""

    run: FlowRun
    problem: str  # "crashed", "no heartbeat", "stuck pending", "wait without schema"
    detail: str


def heartbeat_filter(runs: list[FlowRun], since: datetime) -> EventFilter:
    """The events query for the heartbeats `runs` emitted since `since`."""
    return EventFilter(
        occurred=EventOccurredFilter(since=since),
        event=EventNameFilter(name=[HEARTBEAT_EVENT]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{r.id}" for r in runs]),
    )


def awaits_heartbeat(run: FlowRun, stale: datetime) -> bool:
    """Whether the run has been Running since before `stale`: it is dead unless it emitted a heartbeat since."""
    return run.state is not None and run.state.type is StateType.RUNNING and run.state.timestamp < stale


def heartbeats_since(client: SyncPrefectClient, runs: list[FlowRun], since: datetime) -> set[str]:
    """Ids of the runs among `runs` that emitted a heartbeat since `since`."""
    alive: set[str] = set()
    for start in range(0, len(runs), EVENTS_PAGE):
        chunk = runs[start : start + EVENTS_PAGE]
        page = client.read_events(filter=heartbeat_filter(chunk, since), limit=EVENTS_PAGE)
        while True:
            alive |= {e.resource.id.removeprefix("prefect.flow-run.") for e in page.events}
            if not page.next_page:
                break
            page = client.read_events_page(str(page.next_page))
    return alive


def _schema_missing(client: SyncPrefectClient, run: FlowRun) -> bool:
    keyset = run.state.state_details.run_input_keyset if run.state else None
    if not keyset or (run.state.state_details.pause_key if run.state else None) not in WAIT_INPUTS:
        return False
    return read_run_input(client, run.id, keyset["schema"]) is None


def find_dead_runs(
    client: SyncPrefectClient, now: datetime, stale_after_s: float, ids: list[UUID] | None = None
) -> list[DeadRun]:
    """The upsell runs that are dead or stuck (see the module docstring)."""
    return dead_among(client, upsell_runs(client, WATCHED, ids), now, stale_after_s)


def stalled(run: FlowRun, stale_after_s: float, stale: datetime, *, silent: bool) -> DeadRun | None:
    """Why the run will not go on by itself, from its state alone (Crashed, Pending since before `stale`) and
    `silent` (it `awaits_heartbeat` and none came); None when nothing says so."""
    state = run.state
    if state is None:
        return None
    if state.type is StateType.CRASHED:
        return DeadRun(run, "crashed", state.message or "crashed")
    if silent:
        return DeadRun(run, "no heartbeat", f"Running with no heartbeat for {stale_after_s:g} s")
    if state.type is StateType.PENDING and state.timestamp < stale:
        return DeadRun(run, "stuck pending", f"Pending for over {stale_after_s:g} s (its runner stopped)")
    return None


def dead_among(client: SyncPrefectClient, runs: list[FlowRun], now: datetime, stale_after_s: float) -> list[DeadRun]:
    """Which of `runs` (already read) are dead or stuck, and why."""
    stale = now - timedelta(seconds=stale_after_s)
    running = [r for r in runs if r.deployment_id and awaits_heartbeat(r, stale)]
    silent = {r.id for r in running} - {UUID(i) for i in heartbeats_since(client, running, stale)}
    dead: list[DeadRun] = []
    for run in runs:
        state = run.state
        if state is None or run.deployment_id is None:  # a direct call has no deployment to run it again
            continue
        found = stalled(run, stale_after_s, stale, silent=run.id in silent)
        if found is not None:
            dead.append(found)
        elif state.type is StateType.PAUSED and _schema_missing(client, run):
            dead.append(DeadRun(run, "wait without schema", f"waiting for {state.state_details.pause_key} with no"
                                " input schema saved"))  # fmt: skip
    return dead


def recovery_attempts(client: SyncPrefectClient, run_id: UUID) -> list[dict[str, Any]]:
    """The recoveries recorded on the run so far (flow run inputs `upsell-recovery-<n>`), oldest first."""
    attempts: list[dict[str, Any]] = []
    while (raw := read_run_input(client, run_id, f"{RECOVERY_KEY}-{len(attempts) + 1}")) is not None:
        attempts.append(json.loads(raw))
    return attempts


def repair_schema(client: SyncPrefectClient, run: FlowRun) -> None:
    """Save the wait's input schema again from its RunInput class, so the UI form, links and sweeps work."""
    assert run.state is not None and run.state.state_details.run_input_keyset is not None
    input_type: type[RunInput] = WAIT_INPUTS[str(run.state.state_details.pause_key)]
    keyset = run.state.state_details.run_input_keyset
    input_type.save(
        {"description": keyset["description"], "response": keyset["response"], "schema": keyset["schema"]},
        flow_run_id=run.id,
    )


def still_as_found(client: SyncPrefectClient, dead: DeadRun) -> bool:
    """Whether the run is still in the very state it was found dead in. The reschedule is forced (Prefect refuses
    it from Crashed otherwise), so a run that meanwhile went on, waits or finished must not get it."""
    state = client.read_flow_run(dead.run.id).state
    return state is not None and dead.run.state is not None and state.id == dead.run.state.id


def recover(
    client: SyncPrefectClient, dead: DeadRun, now: datetime, *, max_attempts: int, backoff_s: float
) -> str:
    """Repair, reschedule or give up on one dead run; returns what was done."""
    if not still_as_found(client, dead):
        return "left alone (its state changed)"
    if dead.problem == "wait without schema":
        repair_schema(client, dead.run)
        return "schema saved again"
    attempts = recovery_attempts(client, dead.run.id)
    reason = f"{dead.problem}: {dead.detail}"
    if len(attempts) >= max_attempts:
        message = f"Upsell gave up after {len(attempts)} recoveries; last problem: {reason}"
        client.set_flow_run_state(dead.run.id, Failed(message=message), force=True)
        return "failed"
    number = len(attempts) + 1
    record = {"attempt": number, "at": now.isoformat(), "problem": dead.problem, "detail": dead.detail}
    client.create_flow_run_input(dead.run.id, f"{RECOVERY_KEY}-{number}", json.dumps(record))
    when = now + timedelta(seconds=backoff_s * 2 ** (number - 1))
    message = f"Recovery {number}/{max_attempts} at {when.isoformat(timespec='seconds')}: {reason}"
    client.set_flow_run_state(dead.run.id, Scheduled(scheduled_time=when, message=message), force=True)
    return "rescheduled"


@task(**step_options("recover_dead_runs", FETCH_STEP))
def recover_dead_runs(
    stale_after_s: float, max_attempts: int, backoff_s: float, flow_run_ids: list[UUID] | None = None
) -> dict[str, str]:
    """Find upsell runs whose process died (or that wait without a schema) and recover each; flow run id ->
    what was done."""
    logger = get_run_logger()
    now = datetime.now(UTC)
    done: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        for dead in find_dead_runs(client, now, stale_after_s, flow_run_ids):
            done[str(dead.run.id)] = outcome = recover(
                client, dead, now, max_attempts=max_attempts, backoff_s=backoff_s
            )
            logger.warning("Upsell run %s (%s): %s -> %s", dead.run.name, dead.run.id, dead.detail, outcome)
    logger.info("%d dead or stuck upsell run(s) handled", len(done))
    return done
