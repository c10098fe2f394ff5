"""The upsell-backfill flow: triggers upsells for a window's qualifying alerts that have none yet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from tasks.backfill_alerts import Submission, scan_usage_alerts, submit_alert
from tasks.runtime.policy import configured


class BackfillSummary(BaseModel):
    """Counts of a backfill run."""

    since: datetime
    until: datetime
    dry_run: bool
    scanned: int
    qualifying: int
    already_handled: int
    triggered: int
    queued: int = 0
    would_trigger: int = 0
    submissions: list[Submission] = Field(default_factory=list)


def backfill_run_name() -> str:
    """`backfill-YYYYMMDD-HHMMSS` (the end of the window scanned, else the scheduled time; UTC), with `-dry-run`
    for a dry run: the run list says what each run was."""
    parameters = flow_run.parameters
    end = parameters.get("end") or flow_run.scheduled_start_time or datetime.now(UTC)
    end = datetime.fromisoformat(end) if isinstance(end, str) else end
    return f"backfill-{end.astimezone(UTC):%Y%m%d-%H%M%S}{'-dry-run' if parameters.get('dry_run') else ''}"


@flow(name="upsell-backfill", flow_run_name=backfill_run_name)
def upsell_backfill(window_hours: float = 24.0, end: datetime | None = None, dry_run: bool = False) -> BackfillSummary:
    """Scan the usage source over a window and submit each qualifying alert through the receiver."""
    until = end or datetime.now(UTC)
    since = until - timedelta(hours=window_hours)
    alerts = configured(scan_usage_alerts)(since, until)
    submit = configured(submit_alert)
    submissions = [submit(alert, dry_run) for alert in alerts]
    counts = {v: sum(1 for s in submissions if s.verdict == v) for v in
              ("triggered", "queued", "already_handled", "not_qualifying", "would_trigger")}
    summary = BackfillSummary(
        since=since, until=until, dry_run=dry_run, scanned=len(alerts),
        qualifying=len(alerts) - counts["not_qualifying"], already_handled=counts["already_handled"],
        triggered=counts["triggered"], queued=counts["queued"], would_trigger=counts["would_trigger"],
        submissions=submissions,
    )
    create_table_artifact(
        key="upsell-backfill",
        table=[s.model_dump(mode="json") for s in submissions],
        description=f"Backfill {since:%Y-%m-%d %H:%M}..{until:%Y-%m-%d %H:%M} UTC"
        f"{' (dry run)' if dry_run else ''}: {summary.triggered} triggered, {summary.already_handled} already handled",
    )
    return summary
