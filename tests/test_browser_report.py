"""The sales lead opens the funnel report in a real browser (Chromium): the receiver answers with its sign-in page,
the lead signs in with the report's token, and the browser comes back to the report and shows its charts; a
reload keeps the session (the cookie), a wrong token shows the page again. Screenshots: `report-sign-in`,
`report-signed-in`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from flows.report import default_since
from tests import test_report as report_data
from tests.browser import (  # noqa: F401  (the fixtures `browser` and `page`)
    browser_fixture,
    page_fixture,
    screenshot,
)
from tests.test_webhook_support import SECRET
from webhook.deps import REPORT_COOKIE
from webhook.serve import ReceiverThread
from webhook.settings import ReceiverSettings

if TYPE_CHECKING:  # playwright is imported by the `browser` fixture, which skips when it cannot run
    from playwright.sync_api import Page


@pytest.fixture(scope="module")
def token_receiver(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A receiver whose report is opened with a token only (no user name and password: the form is the way in)."""
    data = tmp_path_factory.mktemp("browser-report")
    monday = default_since(datetime.now(UTC).date(), 3)
    report_data.seed(data, datetime(monday.year, monday.month, monday.day, tzinfo=UTC))
    settings = ReceiverSettings(webhook_secrets=SECRET, data_dir=data, receiver_db=data / "receiver.db",
                                prefect_api_url=prefect_server, report_token=report_data.TOKEN,
                                report_login_failures=1000)
    with ReceiverThread(settings) as server:
        yield server.url


def test_sales_lead_signs_in_to_the_report(page: Page, token_receiver: str, tmp_path: Path) -> None:
    opened = page.goto(f"{token_receiver}/report")
    assert opened is not None and opened.status == 401  # no credentials: the sign-in page, not a JSON error
    page.get_by_label("Report token").wait_for()
    screenshot(page, tmp_path, "report-sign-in")

    page.get_by_label("Report token").fill("not-the-report-token-at-all")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("alert").filter(has_text="That is not the report's token.").wait_for()
    assert page.locator("svg.funnel").count() == 0

    page.get_by_label("Report token").fill(report_data.TOKEN)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{token_receiver}/report")
    page.get_by_role("heading", name="Upsell funnel").wait_for()
    box = page.locator("svg.funnel").bounding_box()
    assert box is not None and box["width"] > 400  # the report, its funnel chart drawn
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies[REPORT_COOKIE]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/report"
    assert report_data.TOKEN not in session["value"]
    screenshot(page, tmp_path, "report-signed-in")

    again = page.reload()  # the session holds: no sign-in again
    assert again is not None and again.status == 200
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script on the page can read it
