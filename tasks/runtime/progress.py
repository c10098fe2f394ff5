"""Makes each run's progress visible in the Prefect UI: a markdown artifact per upsell and Prefect events.

These are bookkeeping helpers the flow calls directly, not tasks: a task run costs the API a row, its states
and their events, and an upsell replays everything before a wait each time it resumes. The flow publishes each
stage once (see `flows.upsell.Journal`).
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.runtime import flow_run

from blocks.registry import SERVICES, resolve
from flows.models import STAGE_ORDER, UpsellStage, UsageAlert
from tasks.runtime.settings import get_settings

#: Event name emitted when a stage is reached, so Prefect automations can act on it.
STAGE_EVENTS: dict[UpsellStage, str] = {
    UpsellStage.STARTED: "upsell.started",
    UpsellStage.FETCHING_DATA: "upsell.data.fetched",
    UpsellStage.AI_ANALYSIS: "upsell.plan.created",
    UpsellStage.EMAIL_SENT: "upsell.email.sent",
    UpsellStage.SLACK_POSTED: "upsell.slack.posted",
    UpsellStage.WAITING_REPLY: "upsell.reply.received",
    UpsellStage.MEETING_SCHEDULED: "upsell.meeting.scheduled",
    UpsellStage.COMPLETED: "upsell.completed",
}


def render_journal(alert: UsageAlert, journal: list[dict[str, Any]]) -> str:
    """Markdown: one row per workflow state, reached or not, with what happened there."""
    reached = {entry["stage"]: entry for entry in journal}
    current = journal[-1]["stage"] if journal else UpsellStage.STARTED.value
    lines = [
        f"# Upsell {alert.account_id} / {alert.event_id}",
        "",
        f"**Current stage:** {current}  ",
        f"**Metric:** {alert.metric_type} = {alert.current_value} (threshold {alert.threshold}),"
        f" severity {alert.severity.value}",
        "",
        "| Stage | Status | Details |",
        "|---|---|---|",
    ]
    for stage in STAGE_ORDER:
        entry = reached.get(stage.value)
        mark = "done" if entry else "-"
        details = "; ".join(f"{k}: {v}" for k, v in (entry or {}).get("details", {}).items())
        lines.append(f"| {stage.value} | {mark} | {details.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def publish_journal(alert: UsageAlert, journal: list[dict[str, Any]]) -> None:
    """Publish the run's stage table as a new version of its markdown artifact (`upsell-<alert slug>`)."""
    stage = UpsellStage(journal[-1]["stage"])
    create_markdown_artifact(
        key=f"upsell-{alert.slug}",
        markdown=render_journal(alert, journal),
        description=f"Upsell {alert.account_id}/{alert.event_id}: {stage.value}",
    )


def publish_stage(alert: UsageAlert, journal: list[dict[str, Any]]) -> None:
    """Emit the Prefect event of the stage just reached (the last entry) and log it."""
    stage = UpsellStage(journal[-1]["stage"])
    details = journal[-1].get("details", {})
    emit_event(
        event=details.get("event") or STAGE_EVENTS[stage],
        resource={
            "prefect.resource.id": f"upsell.opportunity.{alert.opportunity_id}",
            "prefect.resource.name": alert.opportunity_id,
            "upsell.account_id": alert.account_id,
            "upsell.event_id": alert.event_id,
        },
        payload={"stage": stage.value, "flow_run_id": str(flow_run.get_id()), **details},
    )
    get_run_logger().info("Stage: %s %s", stage.value, details or "")


def announce_integrations(log: bool = True) -> list[str]:
    """The services a local stand-in stands in for; with `log`, say which integrations are real and which not."""
    logger = get_run_logger()
    standins = []
    for service in SERVICES:
        chosen = resolve(service, get_settings())
        if chosen.standin:
            standins.append(service)
        if log and chosen.standin:
            logger.info(
                "Stand-in for %s: %s (save block %s to use the real service)",
                service,
                chosen.description,
                SERVICES[service].document,
            )
        elif log:
            logger.info("Integration %s: %s", service, chosen.description)
        close = getattr(chosen.client, "close", None)
        if callable(close):
            close()
    return standins


def collect_timings() -> dict[str, float]:
    """Seconds each step ran in this flow run (summed over retries and resumed segments), from the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    run_id = flow_run.get_id()
    timings: dict[str, float] = {}
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])), limit=200)
    for run in runs:
        name = run.name.rsplit("-", 1)[0]
        timings[name] = round(timings.get(name, 0.0) + run.total_run_time.total_seconds(), 3)
    return timings
