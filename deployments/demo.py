"""`upsell demo`: the reference design's example and one alert per other automation level, end to end.

Every answer goes through the real resume path (typed run input); the unanswered reply is closed by the
`reply-timeouts` deployment, like in production.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient, get_client
from prefect.deployments import arun_deployment

from flows.api import create_upsell_run, resume_wait
from flows.models import AutomationLevel, UpsellOutcome, UsageAlert, automation_level_for

TIMEOUT = "let it time out"


@dataclass
class Scenario:
    """One demo alert, how the humans answer its waits, and what the run must end with."""

    label: str
    alert: dict[str, Any]
    answers: dict[str, dict[str, Any] | str]
    expect: dict[str, Any]
    reply_timeout_s: float | None = None


def scenarios() -> list[Scenario]:
    return [
        Scenario(
            "seed example (high -> HYBRID), customer says yes",
            {
                "account_id": "12345",
                "metric_type": "trade_volume",
                "current_value": 150,
                "threshold": 100,
                "severity": "high",
            },
            {
                "reply": {"reply": "yes"},
                "review": {"approved": True, "estimated_value": 42000.0, "note": "demo: approved by sales"},
            },
            {"status": "completed", "reply": "yes", "meeting": True},
        ),
        Scenario(
            "critical -> FULL_AUTOMATION, customer says no",
            {
                "account_id": "23456",
                "metric_type": "trade_volume",
                "current_value": 5200,
                "threshold": 4000,
                "severity": "critical",
            },
            {"reply": {"reply": "no"}},
            {"status": "completed", "reply": "no", "meeting": False},
        ),
        Scenario(
            "low -> HUMAN_INTERVENTION, no reply before the (demo) timeout",
            {
                "account_id": "34567",
                "metric_type": "balance_change",
                "current_value": 1500,
                "threshold": 1200,
                "severity": "low",
            },
            {
                "approve-email": {"approved": True, "note": "demo: email approved"},
                "reply": TIMEOUT,
                "approve-opportunity": {"approved": True, "estimated_value": 15000.0, "note": "demo: log it"},
            },
            {"status": "completed", "reply": "no_reply", "meeting": False},
            reply_timeout_s=8.0,
        ),
    ]


@dataclass
class DemoRun:
    scenario: Scenario
    alert: UsageAlert
    level: AutomationLevel
    flow_run_id: UUID
    answered: list[str] = field(default_factory=list)
    state: str = ""
    outcome: UpsellOutcome | None = None
    problems: list[str] = field(default_factory=list)

    def row(self, ui_url: str) -> dict[str, Any]:
        outcome = self.outcome
        return {
            "scenario": self.scenario.label,
            "event_id": self.alert.event_id,
            "automation_level": self.level.value,
            "state": self.state,
            "status": outcome.status.value if outcome else None,
            "email": outcome.email_status if outcome else None,
            "reply": outcome.reply.value if outcome and outcome.reply else None,
            "meeting": outcome.meeting.join_url if outcome and outcome.meeting else None,
            "opportunity_id": outcome.opportunity_id if outcome else None,
            "planner": outcome.planner if outcome else None,
            "standins": outcome.standins if outcome else None,
            "ui_url": f"{ui_url}/runs/flow-run/{self.flow_run_id}",
            "ok": not self.problems,
            "problems": self.problems,
        }

    def check(self) -> None:
        expect, outcome = self.scenario.expect, self.outcome
        if self.state != "Completed" or outcome is None:
            self.problems.append(f"run ended {self.state}, expected Completed")
            return
        if outcome.status.value != expect["status"]:
            self.problems.append(f"status {outcome.status.value}, expected {expect['status']}")
        if (outcome.reply.value if outcome.reply else None) != expect["reply"]:
            self.problems.append(f"reply {outcome.reply}, expected {expect['reply']}")
        if (outcome.meeting is not None) != expect["meeting"]:
            self.problems.append(f"meeting {outcome.meeting}, expected {'one' if expect['meeting'] else 'none'}")
        if not outcome.email_sent:
            self.problems.append(f"email {outcome.email_status}, expected sent")


async def _drive(client: PrefectClient, runs: list[DemoRun], timeout_s: float, log: Any) -> None:
    """Answer each wait as its scenario says; run the sweep once a demo timeout has passed."""
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    last_sweep = 0.0
    while time.monotonic() < deadline:
        pending = False
        for run in runs:
            if run.state in ("Completed", "Failed", "Crashed", "Cancelled"):
                continue
            flow_run = await client.read_flow_run(run.flow_run_id)
            state = flow_run.state
            if state is None:
                pending = True
                continue
            if state.is_final():
                # a finished upsell is named for its outcome (Won, Declined, ...); its type is what is checked
                run.state = "Completed" if state.is_completed() else (state.name or state.type.value)
                if state.is_completed():
                    run.outcome = UpsellOutcome.model_validate(await state.aresult())
                log(f"  {run.alert.event_id}: {state.name}")
                continue
            pending = True
            key = state.state_details.pause_key if state.is_paused() else None
            if key and key not in run.answered:
                answer = run.scenario.answers.get(key)
                if answer is None:
                    run.problems.append(f"unexpected wait {key}")
                    answer = {"approved": False, "note": "demo did not expect this wait"}
                if answer == TIMEOUT:
                    now = time.monotonic()
                    if now - started > (run.scenario.reply_timeout_s or 0) + 1 and now - last_sweep > 5:
                        log(f"  {run.alert.event_id}: no answer to '{key}'; running the reply-timeouts sweep")
                        sweep = await arun_deployment("reply-timeouts/reply-timeouts", timeout=60, client=client)
                        log(f"  reply-timeouts sweep: {sweep.state.name if sweep.state else '?'}")
                        last_sweep = time.monotonic()
                    continue
                assert isinstance(answer, dict)
                await resume_wait(client, run.flow_run_id, key, answer)
                run.answered.append(key)
                log(f"  {run.alert.event_id}: answered '{key}' with {answer}")
        if not pending:
            return
        await asyncio.sleep(0.5)
    for run in runs:
        if not run.state:
            run.state = "timed out"


async def run_demo(api_url: str, *, timeout_s: float = 300, log: Any = print) -> list[dict[str, Any]]:
    """Trigger the demo alerts, answer them, and return one row per run."""
    tag = time.strftime("%Y%m%d%H%M%S")
    runs: list[DemoRun] = []
    async with get_client() as client:
        for number, scenario in enumerate(scenarios(), start=1):
            alert = UsageAlert(event_id=f"demo-{tag}-{number:03d}", **scenario.alert)
            level = automation_level_for(alert.severity)
            flow_run = await create_upsell_run(client, alert, level, reply_timeout_s=scenario.reply_timeout_s)
            log(f"Triggered {alert.event_id} ({scenario.label}) -> {level.value}, run {flow_run.name}")
            runs.append(DemoRun(scenario, alert, level, flow_run.id))
        await _drive(client, runs, timeout_s, log)
    for run in runs:
        run.check()
    ui_url = api_url.rstrip("/").removesuffix("/api")
    return [run.row(ui_url) for run in runs]


def format_table(rows: list[dict[str, Any]]) -> str:
    """event -> level -> email -> reply -> meeting -> opportunity, then the UI link of each run."""
    headers = ["event", "level", "email", "reply", "meeting", "opportunity", "result"]
    body = [
        [
            r["event_id"],
            r["automation_level"],
            r["email"] or "-",
            r["reply"] or "-",
            "scheduled" if r["meeting"] else "-",
            r["opportunity_id"] or "-",
            "ok" if r["ok"] else "FAIL: " + "; ".join(r["problems"]),
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *body, strict=False)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False))  # noqa: E731
    out = [line(headers), line(["-" * w for w in widths]), *(line(b) for b in body), ""]
    out += [f"{r['event_id']}: {r['ui_url']}" for r in rows]
    return "\n".join(out)
