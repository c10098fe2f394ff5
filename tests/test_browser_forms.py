"""Issue 30, in a real Chromium: a customer answers through the emailed link a wait that crashed and was recovered
(the run ends Won), and a reviewer sees the whole drafted message in the email-approval form of the Prefect UI
(the form's text field shows one line of it). Every step leaves a screenshot (see tests/browser.py)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.states import Crashed

from flows.api import build_alert, create_upsell_run
from flows.models import AutomationLevel, UsageAlert
from flows.recovery import upsell_recovery
from tests.browser import (  # noqa: F401  (the fixtures `browser` and `page`)
    browser_fixture,
    off_the_browser_loop,
    page_fixture,
    screenshot,
)
from tests.conftest import Runner
from tests.support import read_run, wait_until_final, wait_until_paused
from tests.test_browser import (  # noqa: F401  (the fixtures `receiver` and `prefect_ui`)
    PrefectUI,
    _emailed,
    _form_schema,
    _reply_link,
    prefect_ui,
    receiver,
)
from tests.test_recovery import _paused_again

if TYPE_CHECKING:  # playwright is imported by the `browser` fixture, which skips when it cannot run
    from playwright.sync_api import Page


def test_a_recovered_wait_is_answered_through_the_emailed_link(
    page: Page, receiver: str, runner: Runner, tmp_path: Path  # noqa: F811  (the fixture imported above)
):
    alert = UsageAlert(event_id=f"evt-brw-{uuid.uuid4().hex[:10]}", account_id="12345", metric_type="trade_volume",
                       current_value=150, threshold=100, severity="critical")  # fmt: skip

    async def trigger() -> UUID:
        async with get_client() as client:
            return (await create_upsell_run(client, alert, AutomationLevel.FULL_AUTOMATION, reply_timeout_s=900)).id

    run_id = off_the_browser_loop(lambda: asyncio.run(trigger()))
    wait_until_paused(run_id, "reply", timeout_s=90)

    def crash() -> Any:
        with get_client(sync_client=True) as client:  # the serving process died while the run waited
            client.set_flow_run_state(run_id, Crashed(message="No heartbeat or state change for 90 s"), force=True)
        return read_run(run_id).state

    crashed = off_the_browser_loop(crash)
    recovered = off_the_browser_loop(lambda: upsell_recovery(backoff_s=0, flow_run_ids=[run_id]))
    assert recovered == {str(run_id): "rescheduled"}
    _paused_again(run_id, "reply", after=crashed.timestamp)  # the session's runner ran it to the same wait

    # the email the customer got before the crash: its yes button still answers the run
    html = _emailed(runner.data_dir / "outbox", alert.event_id).get_body(preferencelist=("html",))
    assert html is not None, "the email has no HTML part"
    page.set_content(html.get_content())
    token = _reply_link(page, "yes")

    opened = page.goto(f"{receiver}/links/{token}")
    assert opened is not None and opened.status == 200
    page.get_by_role("heading", name="Confirm your answer").wait_for()
    screenshot(page, tmp_path, "recovered-wait-reply-link-confirm-page")
    with page.expect_navigation() as answered:
        page.locator("form").get_by_role("button").click()
    response = answered.value
    assert response is not None and response.status == 200, response and response.text()
    page.get_by_role("heading", name="Thank you").wait_for()
    screenshot(page, tmp_path, "recovered-wait-reply-recorded")

    final = wait_until_final(run_id, timeout_s=90)
    assert final.state is not None and final.state.is_completed() and final.state.name == "Won", final.state
    assert "outcome:won" in final.tags

    # the email's other buttons now say so at once, instead of asking to confirm an answer they cannot give
    page.set_content(html.get_content())
    other = page.goto(f"{receiver}/links/{_reply_link(page, 'no')}")
    assert other is not None and other.status == 410
    page.get_by_role("heading", name="This was already answered").wait_for()
    assert page.locator("form").count() == 0
    screenshot(page, tmp_path, "recovered-wait-other-link-already-answered")


def _waiting_for_email_approval(ui: PrefectUI, served: Runner) -> UUID:
    """A HUMAN_INTERVENTION upsell whose drafted email waits for a reviewer's approval."""
    request, level = build_alert(f"acct-ui-{uuid.uuid4().hex[:8]}", f"evt-ui-{uuid.uuid4().hex[:8]}", "trade_volume",
                                 AutomationLevel.HUMAN_INTERVENTION, current_value=150, threshold=100)

    async def trigger() -> UUID:
        async with get_client() as client:
            return (await create_upsell_run(client, request, level, deployment_name=served.upsell_deployment)).id

    with ui.client_settings():
        run_id = off_the_browser_loop(lambda: asyncio.run(trigger()))
        wait_until_paused(run_id, "approve-email", timeout_s=90)
    return run_id


def _words(text: str) -> str:
    return " ".join(text.split())


def test_the_email_approval_form_shows_the_whole_drafted_message(
    page: Page, prefect_ui: tuple[PrefectUI, Runner], tmp_path: Path  # noqa: F811  (the fixture imported above)
):
    ui, served = prefect_ui
    run_id = _waiting_for_email_approval(ui, served)
    schema = _form_schema(ui, run_id)
    message, subject = schema["properties"]["body_text"]["default"], schema["properties"]["subject"]["default"]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    assert len(lines) >= 3, message  # a message of several lines, the case the one-line field cut short

    page.goto(f"{ui.url}/runs/flow-run/{run_id}")
    page.get_by_role("button", name="Resume").first.click()
    dialog = page.get_by_role("dialog")
    description = dialog.locator(".markdown-renderer").first
    description.get_by_text(f"Subject: {subject}").wait_for()
    screenshot(page, tmp_path, "prefect-ui-email-approval-draft", full_page=False)
    shown = _words(description.inner_text())
    for line in lines:  # every line of the message, in the words the customer would read
        assert _words(re.sub(r"^[-*]\s+", "", line)) in shown, line
    # the UI gives the text the room its form leaves and scrolls the rest: the message's last line can be read
    last = description.get_by_text(_words(re.sub(r"^[-*]\s+", "", lines[-1]))).last
    last.evaluate("line => line.scrollIntoView({block: 'end'})")
    box, seen = description.bounding_box(), last.bounding_box()
    assert box is not None and seen is not None
    assert box["y"] < seen["y"] + seen["height"] <= box["y"] + box["height"] + 2, (box, seen)  # its end in view
    screenshot(page, tmp_path, "prefect-ui-email-approval-draft-end", full_page=False)

    with ui.client_settings(), get_client(sync_client=True) as client:  # the answer the form gives is unchanged
        state = client.read_flow_run(run_id).state
        assert state is not None and state.state_details.pause_key == "approve-email"
        keyset = state.state_details.run_input_keyset
        description = json.loads(client.read_flow_run_input(run_id, keyset["description"]))
    assert "> Subject: " in description
