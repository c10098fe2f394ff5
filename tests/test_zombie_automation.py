"""Issue 30: the zombie-run automation, running on the test server, never acts on a run that waits or finished.

A late heartbeat (sent after the run suspended or ended) opens a silence no event of that run will end; the
automation fires, and its action, the recovery sweep for that run, reads the run's state and leaves it alone. A
run that really fell silent while Running is still rescheduled. The automation here watches only runs of a
deployment nobody serves, with a 10 s silence, so it touches no other test's runs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.events import Event
from prefect.events.clients import get_events_client
from prefect.states import Completed, Running, Suspended

from deployments.automations import RECOVERY_DEPLOYMENT, zombie_automation
from flows.models import UsageAlert
from flows.upsell import upsell
from tests.support import read_run

WATCHED = "zombie-watched"  # served by nobody: a rescheduled run stays Scheduled
SILENCE_S = 10.0  # Prefect's shortest proactive window


def _alert() -> UsageAlert:
    return UsageAlert(event_id=f"evt-zmb-{uuid.uuid4().hex[:10]}", account_id="12345", metric_type="trade_volume",
                      current_value=150, threshold=100, severity="critical")  # fmt: skip


def _create(deployment_id: UUID, state: Any) -> FlowRun:
    alert = _alert()
    with get_client(sync_client=True) as client:
        return client.create_flow_run_from_deployment(
            deployment_id, parameters={"alert": alert.model_dump(mode="json")}, state=state,
            idempotency_key=f"upsell:{alert.event_id}",
        )  # fmt: skip


def _late_heartbeat(run: FlowRun) -> None:
    """A heartbeat of `run` as the engine sends it (resource and related resources), arriving after its last state."""
    event = Event(
        event="prefect.flow-run.heartbeat",
        resource={"prefect.resource.id": f"prefect.flow-run.{run.id}", "prefect.resource.name": run.name},
        related=[
            {"prefect.resource.id": f"prefect.flow.{run.flow_id}", "prefect.resource.role": "flow",
             "prefect.resource.name": "upsell"},
            {"prefect.resource.id": f"prefect.deployment.{run.deployment_id}", "prefect.resource.role": "deployment",
             "prefect.resource.name": WATCHED},
        ],  # fmt: skip
    )

    async def go() -> None:
        async with get_events_client() as events:
            await events.emit(event)

    asyncio.run(go())


def _sweeps_for(run_id: UUID) -> list[FlowRun]:
    """The recovery sweeps the automation started for `run_id`."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["upsell-recovery"])),
                                     flow_run_filter=FlowRunFilter(), limit=200)  # fmt: skip
    return [r for r in runs if str(run_id) in [str(i) for i in r.parameters.get("flow_run_ids") or []]]


def _until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(what)


def test_a_late_event_never_crashes_a_waiting_or_finished_run(runner: Any) -> None:
    deployment = upsell.to_deployment(name=WATCHED)
    deployment_id = UUID(str(deployment.apply()))  # type: ignore[union-attr]
    with get_client(sync_client=True) as client:
        recovery_id = client.read_deployment_by_name(RECOVERY_DEPLOYMENT).id
    automation = zombie_automation(
        recovery_id, name=f"zombie-test-{uuid.uuid4().hex[:8]}", after_s=SILENCE_S, deployment_name=WATCHED
    )
    automation.create()
    try:
        finished = _create(deployment_id, Completed(message="Won"))
        waiting = _create(deployment_id, Running())
        with get_client(sync_client=True) as client:
            suspended: Any = client.set_flow_run_state(waiting.id, Suspended(timeout_seconds=600, pause_key="reply"))
        assert suspended.state is not None and suspended.state.is_paused()
        waiting_state = read_run(waiting.id).state
        for run in (finished, read_run(waiting.id)):
            _late_heartbeat(run)
        silent = _create(deployment_id, Running())  # its process died before its first heartbeat

        # the silent run is rescheduled by the sweep the automation started for it
        _until(lambda: (s := read_run(silent.id).state) is not None and s.type is StateType.SCHEDULED, 90,
               "the silent Running run was not rescheduled")  # fmt: skip
        message = read_run(silent.id).state.message  # type: ignore[union-attr]
        assert message and message.startswith("Recovery 1/3") and "no heartbeat" in message, message
        # the late heartbeats fired it for the others too; the sweeps it started ran and left them alone
        for run in (finished, waiting):
            _until(lambda r=run: any(s.state and s.state.is_final() for s in _sweeps_for(r.id)), 90,
                   f"no finished recovery sweep for {run.id}")  # fmt: skip
            sweep = next(s for s in _sweeps_for(run.id) if s.state and s.state.is_final())
            assert sweep.state is not None and sweep.state.is_completed(), sweep.state
        done = read_run(finished.id).state
        assert done is not None and done.type is StateType.COMPLETED and done.message == "Won"
        still = read_run(waiting.id).state
        assert still is not None and waiting_state is not None and still.id == waiting_state.id  # Suspended, untouched
    finally:
        automation.delete()
