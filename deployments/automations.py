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


def zombie_automation() -> Automation:
    """Crash an upsell run when no heartbeat, final state or wait follows its last heartbeat within 90 s."""
    return Automation(
        name=ZOMBIE_AUTOMATION,
        description="Marks upsell flow runs Crashed when their heartbeats stop (the executing process died);"
        " the upsell-recovery sweep then reschedules them.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            # a wait ends the heartbeats on purpose: Suspended and Paused count as an answer, as final states do
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
                "prefect.flow-run.Suspended",
                "prefect.flow-run.Paused",
            },
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
                message=f"No heartbeat for {ZOMBIE_AFTER_S} s: the process running this upsell died.",
            )
        ],
    )


async def ensure_zombie_automation() -> bool:
    """Create the automation unless one of that name exists; True when it was created now."""
    try:
        await Automation.aread(name=ZOMBIE_AUTOMATION)
        return False
    except ValueError:  # not found
        await zombie_automation().acreate()
        return True
