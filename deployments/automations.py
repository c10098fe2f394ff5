"""The zombie-detection automation of Prefect's docs, for upsell runs: a run that stops sending heartbeats is
handed to the `upsell-recovery` sweep, which runs it again.

The automation sees events only, never a run's state: a heartbeat that arrives after the run suspended or
finished (sent late, or by a thread that had not yet stopped) opens a silence that never ends, and Prefect lets
an automation move a Suspended run to Crashed. Marking runs Crashed from here crashed waiting upsells (issue 30).
So the action runs the sweep for that one run (`flow_run_ids`), with the automation's silence as its stale time:
the sweep reads the run's state and heartbeats, reschedules it only when it is Crashed, Running without a
heartbeat or stuck Pending, and leaves a Paused, Suspended or finished run alone.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.events.actions import RunDeployment
from prefect.events.schemas.automations import EventTrigger, Posture

ZOMBIE_AUTOMATION = "upsell-crash-zombie-runs"
#: The deployment the automation runs for a silent run (the one `upsell serve` and prefect.yaml create).
RECOVERY_DEPLOYMENT = "upsell-recovery/upsell-recovery"
#: The serving processes' heartbeat (Prefect's minimum is 30 s); three missed beats mean the process died.
HEARTBEAT_S = 30
ZOMBIE_AFTER_S = 3 * HEARTBEAT_S
#: The events after which a run must show a sign of life within ZOMBIE_AFTER_S.
WATCHED_EVENTS = (
    "prefect.flow-run.Submitting",
    "prefect.flow-run.Pending",
    "prefect.flow-run.Running",
    "prefect.flow-run.heartbeat",
)


def zombie_automation(
    recovery_deployment_id: UUID,
    *,
    name: str = ZOMBIE_AUTOMATION,
    after_s: float = ZOMBIE_AFTER_S,
    deployment_name: str | None = None,
) -> Automation:
    """Run the recovery sweep for an upsell run when no heartbeat, state change or wait follows its hand-over,
    start or last heartbeat within `after_s` (runs of the `deployment_name` deployment only, when given)."""
    deployment: dict[str, str] = {"prefect.resource.role": "deployment"}
    if deployment_name:
        deployment["prefect.resource.name"] = deployment_name
    return Automation(
        name=name,
        description=f"Hands upsell flow runs whose heartbeats stopped for {after_s:g} s to the upsell-recovery sweep,"
        " which reschedules the dead ones (never a waiting or finished run).",
        trigger=EventTrigger(
            # from its start too (a process killed before its first heartbeat is as dead as one that stopped
            # beating), and from its hand-over to a runner or worker (Submitting, then Pending: one that died
            # before starting the run leaves it there; a live one moves it to Running within seconds)
            after=set(WATCHED_EVENTS),
            # any event of the run answers: its next heartbeat, a wait (Suspended and Paused end the heartbeats on
            # purpose) or a final state, whatever its name (a finished upsell is named for its outcome: Won,
            # Declined, ...; the event is `prefect.flow-run.<state name>`). A dead process sends none.
            expect={"prefect.flow-run.*"},
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            # runs of the upsell flow's deployments only (served with 30 s heartbeats; a direct call beats every 180 s)
            match_related=[{"prefect.resource.role": "flow", "prefect.resource.name": "upsell"}, deployment],
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=after_s),
        ),
        actions=[
            # not ChangeFlowRunState(CRASHED): that would act on whatever state the run is in by now
            RunDeployment(
                source="selected",
                deployment_id=recovery_deployment_id,
                parameters={"flow_run_ids": ["{{ flow_run.id | string }}"], "stale_after_s": after_s},
            )
        ],
    )


async def ensure_zombie_automation(recovery_deployment: str = RECOVERY_DEPLOYMENT) -> bool:
    """Create the automation, running the `recovery_deployment` deployment (it must exist), unless one of that
    name exists (one saved by an earlier version, with another trigger or action, is brought up to date); True when
    it was created now."""
    async with get_client() as client:
        wanted = zombie_automation((await client.read_deployment_by_name(recovery_deployment)).id)
    try:
        saved = await Automation.aread(name=ZOMBIE_AUTOMATION)
    except ValueError:  # not found
        await wanted.acreate()
        return True
    if saved.trigger != wanted.trigger or saved.actions != wanted.actions or saved.description != wanted.description:
        saved.trigger, saved.actions, saved.description = wanted.trigger, wanted.actions, wanted.description
        await saved.aupdate()
    return False
