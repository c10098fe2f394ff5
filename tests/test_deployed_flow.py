"""The upsell flow as a deployment run: suspends (no process held) and resumes with typed input."""

from __future__ import annotations

import asyncio
import time
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.sorting import ArtifactSort
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from flows.api import resume_wait, send_customer_reply, trigger_upsell_workflow
from flows.models import AutomationLevel, UpsellOutcome
from tests.support import outbox_emails, wait_until_final, wait_until_paused


async def _trigger(event_id: str, level: AutomationLevel, **kw) -> str:
    async with get_client() as client:
        return str(
            await trigger_upsell_workflow(
                client, "12345", event_id, level, "trade_volume", current_value=150, threshold=100, **kw
            )
        )


async def _reply(run_id: str, reply: str) -> None:
    async with get_client() as client:
        await send_customer_reply(client, run_id, reply)


async def _stages_published(run_id: str) -> list[str]:
    """The stage of each version of the run's markdown artifact, oldest first (one version per publication)."""
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)])),
            sort=ArtifactSort.CREATED_DESC,
        )
    return [a.description.rsplit(": ", 1)[-1] for a in reversed(artifacts) if a.description]


def _stage_events(opportunity_id: str, expected: int, timeout_s: float = 30) -> list[str]:
    """The stages of the run's `upsell.*` events, oldest first (events are stored asynchronously: poll)."""
    event_filter = EventFilter(
        event=EventNameFilter(prefix=["upsell."]),
        resource=EventResourceFilter(id=[f"upsell.opportunity.{opportunity_id}"]),
    )
    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            events = client.read_events(filter=event_filter, limit=50).events
        if len(events) >= expected or time.monotonic() > deadline:
            return [e.payload["stage"] for e in sorted(events, key=lambda e: e.occurred)]
        time.sleep(0.5)


async def _resume(run_id: str, kind: str, value: dict) -> None:
    async with get_client() as client:
        await resume_wait(client, run_id, kind, value)


def test_hybrid_deployment_run_suspends_and_resumes(runner, event_id):
    run_id = asyncio.run(_trigger(event_id, AutomationLevel.HYBRID))
    run = wait_until_paused(run_id, "reply", timeout_s=90)
    assert run.state.name == "Suspended"
    asyncio.run(_reply(run_id, "yes"))
    wait_until_paused(run_id, "review", timeout_s=60)
    asyncio.run(_resume(run_id, "review", {"approved": True, "estimated_value": 12345.0, "note": "ok"}))
    final = wait_until_final(run_id, timeout_s=60)
    assert final.state.is_completed() and final.state.name == "Won", final.state  # named for the outcome
    outcome = UpsellOutcome.model_validate(final.state.result())
    assert outcome.reply == "yes" and outcome.meeting is not None
    assert len(list(outbox_emails(runner.data_dir / "outbox", event_id))) == 1
    # Three segments (start, after the reply, after the review) replay the flow up to their wait; each stage
    # is still one Prefect event, in order, and the artifact gets one version per wait and one at the end.
    stages = ["Started", "Fetching Data", "AI Analysis", "Email Sent", "Slack Posted",
              "Waiting Reply", "Waiting Reply", "Meeting Scheduled", "Completed"]
    assert _stage_events(outcome.opportunity_id or "", len(stages)) == stages
    assert asyncio.run(_stages_published(run_id)) == ["Waiting Reply", "Waiting Reply", "Completed"]
