"""The upsell-report flow: every Monday, the funnel of the last weeks as the `upsell-funnel` markdown artifact.

It lives here, not in flows/, because it reads the receiver's file (webhook/), which the flows layer may not.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from deployments.report import load_report
from flows.report import DEFAULT_WEEKS, FunnelReport, default_since, money, render_markdown

#: The artifact's key: each weekly run adds a version, so the UI shows the latest and keeps the history.
ARTIFACT_KEY = "upsell-funnel"


def report_run_name() -> str:
    """`funnel-report-YYYYMMDD-HHMMSS` (its scheduled time, UTC): the run list says what each run was."""
    started = flow_run.scheduled_start_time or datetime.now(UTC)
    return f"funnel-report-{started.astimezone(UTC):%Y%m%d-%H%M%S}"


@task(name="read_funnel", retries=2, retry_delay_seconds=30)
def read_funnel(since: date) -> FunnelReport:
    """Count the receiver's alerts and read the opportunities logged since `since` into the funnel."""
    return load_report(since)


@flow(name="upsell-report", flow_run_name=report_run_name)
def upsell_report(weeks: int = DEFAULT_WEEKS, since: date | None = None) -> str:
    """Publish the upsell funnel of the last `weeks` ISO weeks (or from `since`) as a markdown artifact."""
    first_day = since or default_since(datetime.now(UTC).date(), weeks)
    report = read_funnel(first_day)
    artifact_id = create_markdown_artifact(
        key=ARTIFACT_KEY,
        markdown=render_markdown(report),
        description=f"Upsell funnel since {first_day:%Y-%m-%d}: {report.total.emailed} emailed, {report.total.yes}"
        f" answered yes, {report.total.meetings} meetings, pipeline {money(report.total.pipeline_value)}",
    )
    get_run_logger().info("Published the funnel since %s (artifact %s)", first_day, ARTIFACT_KEY)
    return str(artifact_id)
