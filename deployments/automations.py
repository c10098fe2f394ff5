"""The zombie-detection automation of Prefect's docs, for upsell runs: a run that stops sending heartbeats is
marked Crashed, and the `upsell-recovery` sweep runs it again."""

from __future__ import annotations

from datetime import timedelta

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture

ZOMBIE_AUTOMATION = "upsell-crash-zombie-runs"
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


def zombie_automation() -> Automation:
    """Crash an upsell run when no heartbeat, state change or wait follows its hand-over, start or last heartbeat
    within 90 s."""
    return Automation(
        name=ZOMBIE_AUTOMATION,
        description="Marks upsell flow runs Crashed when their heartbeats stop (the executing process died);"
        " the upsell-recovery sweep then reschedules them.",
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
            match_related=[
                {"prefect.resource.role": "flow", "prefect.resource.name": "upsell"},
                {"prefect.resource.role": "deployment"},
            ],
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=ZOMBIE_AFTER_S),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat or state change for {ZOMBIE_AFTER_S} s: the process running or starting this"
                " upsell died.",
            )
        ],
    )


async def ensure_zombie_automation() -> bool:
    """Create the automation unless one of that name exists (one saved by an earlier version, with another
    trigger, is brought up to date); True when it was created now."""
    wanted = zombie_automation()
    try:
        saved = await Automation.aread(name=ZOMBIE_AUTOMATION)
    except ValueError:  # not found
        await wanted.acreate()
        return True
    if saved.trigger != wanted.trigger:
        saved.trigger = wanted.trigger
        await saved.aupdate()
    return False
