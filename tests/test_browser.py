"""What a customer and a reviewer do, in a real Chromium: the customer opens the emailed reply link, confirms
on the receiver's page and the run goes on; a reviewer opens a suspended run in the Prefect UI, presses Resume,
fills the typed form (an out-of-range value is refused) and the run finishes; the stage artifact page shows the
run's progress; the sales lead opens the funnel report and its charts are drawn. Every step leaves a screenshot
(see tests/browser.py)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.sorting import ArtifactSort
from prefect.settings import PREFECT_API_URL, temporary_settings

from blocks.mongo import SqliteOpportunityStore
from deployments.stack import stop_process
from flows.api import build_alert, create_upsell_run, send_customer_reply
from flows.models import AutomationLevel, Opportunity, UpsellOutcome
from flows.report import default_since
from tasks.runtime.links import verify_token
from tests import test_report as report_data
from tests.browser import (  # noqa: F401  (the fixtures `browser` and `page`)
    browser_fixture,
    off_the_browser_loop,
    page_fixture,
    screenshot,
)
from tests.conftest import REPO, Runner
from tests.support import outbox_email, read_run, wait_until_final, wait_until_paused
from tests.test_webhook_support import SECRET, alert, post_alert
from webhook.ports import free_port
from webhook.serve import ReceiverThread
from webhook.settings import ReceiverSettings

if TYPE_CHECKING:  # playwright is imported by the `browser` fixture, which skips when it cannot run
    from playwright.sync_api import Browser, Locator, Page

LINK_PATH = re.compile(r"/links/([A-Za-z0-9_-]+)")
UI_SERVER_START_S = 120  # a fresh database is migrated first; the benchmark may share the machine


# ---- the customer: the emailed reply link, served by the receiver ----


@pytest.fixture(scope="module")
def receiver(browser: Browser, runner: Runner, prefect_server: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The receiver under uvicorn on a free port, against the session's server and runner; yields its URL.

    (It asks for `browser` first so that the module is skipped before anything starts when no browser can run.)
    """
    settings = ReceiverSettings(webhook_secrets=SECRET, data_dir=runner.data_dir,
                                receiver_db=tmp_path_factory.mktemp("browser-receiver") / "receiver.db",
                                prefect_api_url=prefect_server, prefect_timeout_s=30)
    with ReceiverThread(settings) as server:
        yield server.url


def _emailed(outbox: Path, event_id: str) -> EmailMessage:
    with outbox_email(outbox, event_id).open("rb") as handle:
        return BytesParser(policy=policy.default).parse(handle)  # type: ignore[return-value]


def _reply_link(email_page: Page, answer: str) -> str:
    """The token of the email's link that answers `answer` (read from the link as rendered, checked by its MAC)."""
    secret = ReceiverSettings(webhook_secrets=SECRET).link_secret.get_secret_value()
    for href in email_page.locator("a[href*='/links/']").evaluate_all("links => links.map(a => a.href)"):
        match = LINK_PATH.search(href)
        if match and verify_token(match.group(1), secret).value.get("reply") == answer:
            return match.group(1)
    raise AssertionError(f"the email has no {answer!r} reply link")


def _csp_violations(page: Page) -> list[str]:
    """Console messages of the page about its Content-Security-Policy (collected from now on)."""
    seen: list[str] = []
    page.on("console", lambda message: seen.append(message.text) if "Content Security Policy" in message.text
            else None)
    return seen


def test_customer_answers_through_the_emailed_link(page: Page, receiver: str, runner: Runner, tmp_path: Path):
    payload = alert(severity="critical")  # FULL_AUTOMATION: the email goes out, then the run waits for the reply
    with httpx.Client(base_url=receiver, timeout=60) as http:
        run_id = post_alert(http, payload).json()["flow_run_id"]
    wait_until_paused(run_id, "reply", timeout_s=90)

    # the email as the customer sees it: its HTML part, with the reply buttons
    message = _emailed(runner.data_dir / "outbox", payload["event_id"])
    html = message.get_body(preferencelist=("html",))
    assert html is not None, "the email has no HTML part"
    page.set_content(html.get_content())
    screenshot(page, tmp_path, "email-reply-links")
    token = _reply_link(page, "yes")

    # the link opens the confirmation page (the links name the public base URL: open it on this test's receiver)
    violations = _csp_violations(page)
    opened = page.goto(f"{receiver}/links/{token}")
    assert opened is not None and opened.status == 200
    confirm = page.locator("form").get_by_role("button")
    confirm.wait_for()
    screenshot(page, tmp_path, "reply-link-confirm-page")
    assert read_run(run_id).state.state_details.pause_key == "reply"  # opening the page changed nothing

    with page.expect_navigation() as answered:
        confirm.click()
    response = answered.value
    assert response is not None and response.status == 200, response and response.text()
    screenshot(page, tmp_path, "reply-link-recorded")
    assert not violations, f"the receiver's pages break their own Content-Security-Policy: {violations}"

    final = wait_until_final(run_id, timeout_s=90)
    assert final.state is not None and final.state.is_completed(), final.state
    outcome = UpsellOutcome.model_validate(off_the_browser_loop(final.state.result))
    assert outcome.reply == "yes" and outcome.meeting is not None


# ---- the reviewer: the Prefect UI, served by a Prefect server of this module ----


class PrefectUI:
    """`prefect server start` with its UI on, on a free port, with a database of its own.

    The session's test server cannot show the UI: `prefect_test_harness` starts it with PREFECT__SERVER_EPHEMERAL
    set, and an ephemeral server never mounts the UI, whatever PREFECT_SERVER_UI_ENABLED says.
    """

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.url}/api"
        self.log_path = home / "prefect-ui-server.log"
        env = {key: value for key, value in os.environ.items() if key not in ("PREFECT_API_URL", "PREFECT_PROFILE")}
        env.update({
            "PREFECT_HOME": str(home / "prefect-home"),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect-ui.db'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "true",
            "PREFECT_UI_API_URL": self.api_url,
        })
        command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                   str(self.port), "--ui", "--analytics-off", "--no-scheduler", "--no-late-runs"]
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + UI_SERVER_START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Prefect server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"Prefect server not ready: {self.log_path.read_text()[-2000:]}")

    def client_settings(self) -> AbstractContextManager[Any]:
        """Inside it, `get_client()` (and the helpers of tests.support) talk to this server, not the session's."""
        return temporary_settings(updates={PREFECT_API_URL: self.api_url})

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


@pytest.fixture(scope="module")
def prefect_ui(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrefectUI, Runner]]:
    """A Prefect server with its UI, and the deployments served against it by a runner of their own (after
    `browser`, so that nothing starts when the browser tests are skipped)."""
    home = tmp_path_factory.mktemp("prefect-ui")
    ui = PrefectUI(home)
    served: Runner | None = None
    try:
        ui.wait_ready()
        served = Runner(ui.api_url, home / "runner-data")
        with ui.client_settings():
            served.wait_ready()
        yield ui, served
    finally:
        if served is not None:
            served.stop()
        ui.stop()


def _start_review(ui: PrefectUI, served: Runner) -> tuple[UUID, str]:
    """A HYBRID upsell the customer said yes to, now waiting for a sales review: (run id, event id)."""
    request, level = build_alert(f"acct-ui-{time.time_ns()}", f"evt-ui-{time.time_ns()}", "trade_volume",
                                 AutomationLevel.HYBRID, current_value=150, threshold=100)

    async def trigger() -> UUID:
        async with get_client() as client:
            return (await create_upsell_run(client, request, level, deployment_name=served.upsell_deployment)).id

    async def reply(run_id: UUID) -> None:
        async with get_client() as client:
            await send_customer_reply(client, run_id, "yes")

    with ui.client_settings():
        run_id = off_the_browser_loop(lambda: asyncio.run(trigger()))
        wait_until_paused(run_id, "reply", timeout_s=90)
        off_the_browser_loop(lambda: asyncio.run(reply(run_id)))
        wait_until_paused(run_id, "review", timeout_s=60)
    return run_id, request.event_id


def _form_schema(ui: PrefectUI, run_id: UUID) -> dict[str, Any]:
    """The JSON schema of the form the run waits for, as the run saved it (the UI draws its form from it)."""
    with ui.client_settings(), get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
        assert state is not None and state.state_details.run_input_keyset, state
        return json.loads(client.read_flow_run_input(run_id, state.state_details.run_input_keyset["schema"]))


class ResumeForm:
    """The Resume dialog of the Prefect UI, its fields found by the titles the saved schema gives them."""

    def __init__(self, page: Page, schema: dict[str, Any]) -> None:
        self.dialog = page.get_by_role("dialog")
        self.schema = schema
        self.page = page

    def field(self, name: str) -> Locator:
        """The field of property `name`: labelled with its title, "(Optional)" only when the schema says so."""
        title = self.schema["properties"][name]["title"]
        label = title if name in self.schema.get("required", []) else f"{title} (Optional)"
        return self.dialog.locator(".schema-form-property").filter(
            has=self.page.get_by_text(re.compile(rf"^\s*{re.escape(label)}\s*$")))

    def fill_review(self, value: str, note: str) -> None:
        approved = self.field("approved").get_by_role("switch")
        if approved.get_attribute("aria-checked") != "true":
            approved.click()
        self.field("estimated_value").get_by_role("spinbutton").fill(value)
        self.field("note").get_by_role("textbox").fill(note)

    def submit(self) -> str:
        """Press Submit; the Prefect API's answer to the resume the UI sends (ACCEPT, REJECT, ABORT, WAIT)."""
        with self.page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/resume")) as sent:
            self.dialog.get_by_role("button", name="Submit").click()
        return str(sent.value.json()["status"])


def _still_waiting_for(ui: PrefectUI, run_id: UUID, key: str, hold_s: float = 1.0) -> bool:
    """Whether the run is still in the `key` wait after `hold_s` (a refused answer leaves it there)."""
    time.sleep(hold_s)
    with ui.client_settings():
        state = read_run(run_id).state
    return state is not None and state.is_paused() and state.state_details.pause_key == key


def test_reviewer_resumes_a_suspended_run_in_the_prefect_ui(
    page: Page, prefect_ui: tuple[PrefectUI, Runner], tmp_path: Path
):
    ui, served = prefect_ui
    run_id, event_id = _start_review(ui, served)

    # the link the Slack summary gives a reviewer: the run's page, with its Resume button
    schema = _form_schema(ui, run_id)
    page.goto(f"{ui.url}/runs/flow-run/{run_id}")
    page.get_by_role("button", name="Resume").first.click()
    form = ResumeForm(page, schema)
    for name, spec in schema["properties"].items():  # every field, with its help text
        form.field(name).wait_for()
        if spec.get("description"):
            form.field(name).get_by_text(spec["description"]).wait_for()
    screenshot(page, tmp_path, "prefect-ui-review-form", full_page=False)

    # a negative value is refused by the API (the saved schema has its minimum): the run keeps waiting
    form.fill_review("-5", "a negative value")
    assert form.submit() != "ACCEPT", "the Prefect API accepted a negative estimated value"
    assert _still_waiting_for(ui, run_id, "review"), "the run left the review with a negative value"
    screenshot(page, tmp_path, "prefect-ui-review-form-refused", full_page=False)

    note = "Approved in the browser test"
    form.fill_review("4321", note)
    assert form.submit() == "ACCEPT"
    form.dialog.wait_for(state="hidden")
    with ui.client_settings():
        final = wait_until_final(run_id, timeout_s=90)
        assert final.state is not None and final.state.is_completed(), final.state
        outcome = UpsellOutcome.model_validate(off_the_browser_loop(final.state.result))
    assert outcome.reviewer_note == note and outcome.meeting is not None
    store = SqliteOpportunityStore(served.data_dir / "upsell.db")
    try:
        opportunity = store.get_opportunity(event_id)
    finally:
        store.close()
    assert opportunity is not None and opportunity.estimated_value == 4321.0

    # the run's page now shows how it ended (the final state's name)
    page.reload()
    page.get_by_text(final.state.name, exact=True).first.wait_for()
    screenshot(page, tmp_path, "prefect-ui-run-finished", full_page=False)


def test_stage_artifact_page_shows_the_runs_progress(
    page: Page, prefect_ui: tuple[PrefectUI, Runner], tmp_path: Path
):
    ui, served = prefect_ui
    run_id, _ = _start_review(ui, served)

    async def latest_artifact() -> Any:
        async with get_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])),
                sort=ArtifactSort.CREATED_DESC,
            )
        return next(a for a in artifacts if a.type == "markdown")

    with ui.client_settings():
        artifact = off_the_browser_loop(lambda: asyncio.run(latest_artifact()))
    markdown = str(artifact.data)
    heading = next(line.lstrip("#").strip() for line in markdown.splitlines() if line.startswith("#"))

    page.goto(f"{ui.url}/artifacts/artifact/{artifact.id}")
    page.get_by_role("heading", name=heading).first.wait_for()
    if artifact.description:
        page.get_by_text(artifact.description).first.wait_for()
    # the table of stages is rendered as a table, not shown as raw markdown
    assert "| Stage | Status | Details |" in markdown, markdown  # the artifact holds the stage table
    assert page.get_by_role("table").count() >= 1
    screenshot(page, tmp_path, "stage-artifact")


# ---- the sales lead: the funnel report, served by the receiver ----


def _showcase_upsells(start: datetime) -> list[Opportunity]:
    """Eight weeks of upsells from `start`: an A/B test in `growth` that A wins, and `enterprise` outside any test."""
    rng = random.Random(7)
    upsells = []
    for week in range(8):
        for i in range(20):
            playbook, variant = ("growth", "AB"[i % 2]) if i < 18 else ("enterprise", "")
            chance = {"A": 0.38, "B": 0.17, "": 0.3}[variant]
            emailed = rng.random() < 0.92
            answer = rng.choices(["yes", "no", "maybe", "no_reply"], [chance, 0.3, 0.15, 0.55 - chance])[0]
            upsells.append(report_data.upsell(
                playbook, variant, start + timedelta(days=7 * week + i % 5, hours=9 + i % 8), emailed=emailed,
                reply=answer if emailed else "no_reply", meeting=emailed and answer == "yes" and rng.random() < 0.7,
                value=float(rng.choice([12_000, 24_000, 36_000, 60_000]))))
    return upsells


def test_sales_lead_reads_the_funnel_report(page: Page, prefect_server: str, tmp_path: Path) -> None:
    monday = default_since(datetime.now(UTC).date(), 9)
    start = datetime(monday.year, monday.month, monday.day, tzinfo=UTC)
    alerts = [(week * 7 + i % 5, i % 3 != 0) for week in range(8) for i in range(30 + 3 * week)]
    data = tmp_path / "report-data"
    report_data.seed(data, start, _showcase_upsells(start), alerts)
    settings = ReceiverSettings(webhook_secrets=SECRET, data_dir=data, receiver_db=data / "receiver.db",
                                prefect_api_url=prefect_server, report_token=report_data.TOKEN)
    with ReceiverThread(settings) as server:
        page.set_extra_http_headers({"Authorization": f"Bearer {report_data.TOKEN}"})
        violations = _csp_violations(page)
        opened = page.goto(f"{server.url}/report")
        assert opened is not None and opened.status == 200, opened and opened.text()
        for chart in ("funnel", "weekly", "rates"):  # each chart is drawn, at a readable size
            box = page.locator(f"svg.{chart}").bounding_box()
            assert box is not None and box["width"] > 400 and box["height"] > 100, (chart, box)
        drawn = "rects => rects.map(r => { const b = r.getBoundingClientRect(); return [b.width, b.height]; })"
        funnel = page.locator("svg.funnel rect.bar").evaluate_all(drawn)
        assert len(funnel) == 9 and all(w > 0 and h > 10 for w, h in funnel[:4])  # alerts .. emailed all drawn
        weekly = page.locator("svg.weekly rect.bar").evaluate_all(drawn)
        assert len(weekly) == 9 * 5 and max(h for _, h in weekly) > 100  # nine weeks (this one too), five series
        assert sum(1 for w, h in weekly if h > 0 and w > 0) >= 8 * 4
        whiskers = page.locator("svg.rates line.whisker").evaluate_all(drawn.replace("rects", "lines"))
        assert len(whiskers) == 6 and all(w > 0 for w, _ in whiskers)  # yes and meeting of three variants
        page.get_by_text("A leads (p").first.wait_for()  # the A/B test is called, in plain words
        screenshot(page, tmp_path, "report")
    assert not violations, f"the report page breaks its own Content-Security-Policy: {violations}"
