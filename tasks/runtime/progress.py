"""Makes each run's progress visible in the Prefect UI: a markdown artifact per upsell and Prefect events.

These are bookkeeping helpers the flow calls directly, not tasks: a task run costs the API a row, its states
and their events, and an upsell replays everything before a wait each time it resumes. The flow publishes each
stage once (see `flows.upsell.Journal`). The artifact is written for the sales team: what the run waits for and
until when, each answer given, numbers as people write them, and none of the ids and settings the events carry.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.runtime import flow_run

from blocks.registry import FLOW_SERVICES, SERVICES, resolve
from flows.models import STAGE_ORDER, UpsellStage, UsageAlert, metric_label
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


#: Each wait of the run: the row of the stage table it shows in, and what the run is doing while it waits.
WAIT_ROWS: dict[str, tuple[str, str]] = {
    "approve-email": ("Email approval", "Waiting for the email to be approved"),
    "send-window": ("Send window", "Waiting for the contact's business hours"),
    "reply": (UpsellStage.WAITING_REPLY.value, "Waiting for the customer's reply"),
    "follow-up-window": ("Follow-up send window", "Waiting for the contact's business hours to follow up"),
    "follow-up-reply": (UpsellStage.WAITING_REPLY.value, "Waiting for the customer's reply to the follow-up"),
    "read-reply": ("Reply reading", "Waiting for a person to read the customer's email"),
    "review": ("Review", "Waiting for review"),
    "approve-meeting": ("Meeting approval", "Waiting for the meeting to be approved"),
    "approve-opportunity": ("Opportunity approval", "Waiting for the opportunity to be approved"),
}

#: How a wait's due time reads in the table: when the answer is due, or when a held email goes out.
DUE_WORDS: dict[str, str] = {"send-window": "sends at", "follow-up-window": "sends at"}


def due_text(wait: str, due: str) -> str:
    return f"{DUE_WORDS.get(wait, 'answer due by')} {when(due)}"


#: How each detail of a stage or an answer is named in the table (details not listed are not shown: the ids and
#: settings kept in the run's events are for machines, not for the sales team).
DETAIL_LABELS: dict[str, str] = {
    "automation_level": "automation",
    "standins": "simulated services",
    "current_plan": "current plan",
    "usage": "usage",
    "over_threshold": "over threshold",
    "trend": "trend",
    "recommended_plan": "recommended plan",
    "estimated_value": "estimated value",
    "planner": "planner",
    "email": "email",
    "to": "to",
    "slack": "Slack",
    "error": "problem",
    "withheld": "withheld by the safety check",
    "reply": "customer replied",
    "decision": "decision",
    "by": "by",
    "edited": "edited",
    "note": "note",
    "join_url": "meeting link",
    "start_time": "starts",
    "outcome": "outcome",
    "opportunity_id": "opportunity",
    "reason": "reason",
    "playbook": "playbook",
    "variant": "variant",
    "follow_up": "follow-up",
}
MONEY = frozenset({"estimated_value"})
LEVEL_NAMES = {
    "FULL_AUTOMATION": "full automation",
    "HYBRID": "hybrid (a review after the reply)",
    "HUMAN_INTERVENTION": "human approval of each step",
}


def when(value: datetime | str) -> str:
    """A moment as people read it: `2026-12-04 09:00 UTC`."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def number(value: float) -> str:
    """`35271.0` -> `35,271`; `1234.5` -> `1,234.5`."""
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def show(key: str, value: Any) -> str:
    """One detail's value as people read it."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and key in MONEY:
        return f"${value:,.0f}/yr" if float(value).is_integer() else f"${value:,.2f}/yr"
    if isinstance(value, int | float):
        return number(value)
    if key == "start_time":
        return when(str(value))
    if key == "automation_level":
        return LEVEL_NAMES.get(str(value), str(value))
    return str(value)


#: Longest details cell kept in the table: Prefect's artifact page does not wrap a table cell, so longer details
#: (a meeting link, a reviewer's note) pushed the table past the screen; they are listed below the table instead.
CELL_CHARS = 90


def _shown(details: dict[str, Any]) -> list[str]:
    return [f"{DETAIL_LABELS[k]}: {show(k, v)}".replace("\n", " ") for k, v in details.items()
            if k in DETAIL_LABELS and v != ""]  # fmt: skip


def _cell(details: dict[str, Any]) -> str:
    return "; ".join(_shown(details)).replace("|", "/")


def _escape(text: str) -> str:
    """Text shown as written in markdown: every markdown and HTML character escaped."""
    return "".join(f"\\{c}" if c in "\\`*_{}[]()<>#+-.!|~&" else c for c in text)


def _quote(text: str) -> str:
    return "\n".join(f"> {_escape(line)}" if line.strip() else ">" for line in text.splitlines()) or "> (empty)"


def draft_section(journal: list[dict[str, Any]]) -> list[str]:
    """The email as drafted, or as approved (the last draft recorded), whole: its subject and every line."""
    drafts = [entry["draft"] for entry in journal if "draft" in entry]
    if not drafts:
        return []
    draft = drafts[-1]
    return ["", f"### The email to {_escape(draft['to'])}", "", _quote(f"Subject: {draft['subject']}"), ">",
            _quote(draft["message"])]  # fmt: skip


def _rows(journal: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Table rows in the order of the design: every stage, reached or not, and each wait the run came to after
    the row it came after. A row is `waiting` while its wait is open, `done` once reached or answered."""
    rows: dict[str, dict[str, Any]] = {stage.value: {"status": "-", "details": {}} for stage in STAGE_ORDER}
    order = list(rows)
    previous = UpsellStage.STARTED.value
    for entry in journal:
        if "wait" not in entry and "stage" not in entry:  # the email's draft: shown below the table
            continue
        name = WAIT_ROWS[entry["wait"]][0] if "wait" in entry else entry["stage"]
        if name not in rows:  # an approval: right after the row the run was at
            rows[name] = {"status": "-", "details": {}}
            order.insert(order.index(previous) + 1, name)
        row = rows[name]
        row["details"] = {**row["details"], **entry.get("details", {})}
        if "due" in entry and "answered" not in entry:
            row["status"], row["due"] = "waiting", due_text(entry["wait"], entry["due"])
        elif row["status"] != "waiting" or "answered" in entry:
            row["status"] = "done"
        previous = name
    return {name: rows[name] for name in order}


def waiting_for(journal: list[dict[str, Any]]) -> str:
    """What the run waits for now, with the answer's due time ("" when it is not waiting)."""
    last = journal[-1] if journal else {}
    if "wait" not in last or "answered" in last:
        return ""
    return f"{WAIT_ROWS[last['wait']][1]} ({due_text(last['wait'], last['due'])})"


def render_journal(alert: UsageAlert, journal: list[dict[str, Any]]) -> str:
    """Markdown: one row per workflow state, reached or not, and per approval reached, with what happened there."""
    stages = [entry["stage"] for entry in journal if "stage" in entry]
    current = waiting_for(journal) or (stages[-1] if stages else UpsellStage.STARTED.value)
    outcome = journal[-1].get("details", {}).get("outcome") if journal else None
    if current == UpsellStage.COMPLETED.value and outcome:
        current = f"{current} ({outcome})"
    trigger = " ".join(
        filter(None, [
            metric_label(alert.metric_type),
            number(alert.current_value) if alert.current_value is not None else "",
            f"(threshold {number(alert.threshold)})" if alert.threshold is not None else "",
        ])
    )
    lines = [
        f"# Upsell {alert.account_id} / {alert.event_id}",
        "",
        f"**Current stage:** {current}  ",
        f"**Trigger:** {trigger}, severity {alert.severity.value}",
        "",
        "| Stage | Status | Details |",
        "|---|---|---|",
    ]
    below: list[str] = []
    for name, row in _rows(journal).items():
        details = _cell(row["details"])
        if row["status"] == "waiting":
            details = "; ".join(filter(None, [details, row["due"]]))
        if len(details) > CELL_CHARS:
            below += ["", f"**{name}**", "", *(f"- {_escape(item)}" for item in _shown(row["details"]))]
            due = row["due"] if row["status"] == "waiting" else ""
            details = "; ".join(filter(None, ["details below the table", due]))
        lines.append(f"| {name} | {row['status']} | {details} |")
    return "\n".join(lines + below + draft_section(journal)) + "\n"


def publish_journal(alert: UsageAlert, journal: list[dict[str, Any]]) -> None:
    """Publish the run's stage table as a new version of its markdown artifact (`upsell-<alert slug>`).

    The description ends with the stage (`...: Waiting Reply`), which the receiver reads back as the run's stage.
    """
    stage = [entry["stage"] for entry in journal if "stage" in entry][-1]
    last = journal[-1]
    waiting = f" ({WAIT_ROWS[last['wait']][1].lower()})" if "wait" in last and "answered" not in last else ""
    create_markdown_artifact(
        key=f"upsell-{alert.slug}",
        markdown=render_journal(alert, journal),
        description=f"Upsell {alert.account_id}/{alert.event_id}{waiting}: {stage}",
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
    shown = _cell(details)
    get_run_logger().info("Stage: %s%s", stage.value, f" ({shown})" if shown else "")


def announce_integrations(log: bool = True) -> list[str]:
    """The services a local stand-in stands in for; with `log`, say which integrations are real and which not."""
    logger = get_run_logger()
    standins = []
    for service in FLOW_SERVICES:
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
