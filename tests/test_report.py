"""The funnel report: its numbers against stores seeded with known outcomes (the embedded opportunity store and the
receiver's file), the Wilson interval and the z-test's p-value against known values, the plain "too small"
wording, and its three surfaces: `GET /report` behind its credentials (inline SVG charts, every stored text
escaped), the `upsell report` command and the weekly `upsell-report` flow publishing its markdown artifact."""

from __future__ import annotations

import base64
import math
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import typer
from fastapi.testclient import TestClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId
from pydantic import ValidationError
from typer.testing import CliRunner

from blocks.mongo import SqliteOpportunityStore
from deployments.report import report_command
from deployments.report_job import ARTIFACT_KEY, upsell_report
from flows.models import AutomationLevel, CustomerReply, Opportunity, UpsellStatus
from flows.report import (
    AlertEvent,
    Funnel,
    FunnelReport,
    build_report,
    default_since,
    iso_week,
    render_markdown,
    render_text,
    wilson,
)
from tests.test_webhook_support import SECRET
from webhook.deps import REPORT_COOKIE, REPORT_SESSION_S, new_session, session_valid
from webhook.main import create_app
from webhook.serve import ReceiverThread
from webhook.settings import ReceiverSettings
from webhook.store import ReceiverStore

TOKEN = "report-token-0123456789abcdef"
USER = "sales-lead"
PASSWORD = "report-password-0123"
#: A playbook and a variant named to break a page that did not escape what it read from the store.
HOSTILE_PLAYBOOK = "<img src=x onerror=alert(1)>"
HOSTILE_VARIANT = "\"><script>alert('v')</script>"

# ---- seeding known outcomes ----


def upsell(playbook: str, variant: str, occurred: datetime, *, emailed: bool = True, reply: str = "no_reply",
           meeting: bool = False, value: float = 1000.0, created: datetime | None = None) -> Opportunity:
    """One logged upsell with the outcome given (emailed unless told otherwise)."""
    event_id = f"evt-{uuid.uuid4().hex[:12]}"
    return Opportunity(
        opportunity_id=f"opp_acct_{event_id}", event_id=event_id, account_id="acct-report", metric_type="trade_volume",
        automation_level=AutomationLevel.HYBRID, status=UpsellStatus.COMPLETED, recommended_plan="Enterprise",
        estimated_value=value, planner="rule-based", reply=CustomerReply(reply),
        email_message_id=f"<{event_id}@example>" if emailed else None,
        meeting_join_url="https://zoom.example/j/1" if meeting else None,
        occurred_at=occurred, playbook=playbook, variant=variant, created_at=created or occurred + timedelta(hours=1),
    )


def known_upsells(start: datetime) -> list[Opportunity]:
    """Upsells in the ISO week starting `start` and the next one, and two that belong before the period."""
    first, second = start + timedelta(days=1, hours=9), start + timedelta(days=8, hours=9)
    return [
        upsell("growth", "A", first, reply="yes", meeting=True, value=1000),
        upsell("growth", "A", first, reply="no"),
        upsell("growth", "A", first, emailed=False),  # suppressed: logged, never emailed
        upsell("growth", "A", second, reply="maybe"),
        upsell("growth", "A", second),  # emailed, no answer
        upsell("growth", "A", second, reply="yes", value=500),  # yes, no meeting (yet)
        upsell("growth", "B", second, reply="yes", meeting=True, value=2000),
        upsell("default", "", first, reply="no"),
        upsell(HOSTILE_PLAYBOOK, HOSTILE_VARIANT, first, emailed=False),
        upsell("growth", "B", start - timedelta(days=10), reply="yes", value=99_999),  # before the period
        # its alert came before the period, though it was logged inside it: it counts in the alert's week
        upsell("growth", "B", start - timedelta(hours=1), reply="yes", value=99_999, created=start + timedelta(days=1)),
    ]


#: (days after the start, qualified) of each alert received that logged no upsell; one before the period.
KNOWN_ALERTS = [(1, True)] + [(1, False)] * 2 + [(8, False)] * 2 + [(-10, True)]
#: The playbook of the known upsell triggered from the CLI: the receiver never saw its alert.
FROM_THE_CLI = "default"


def known_alerts(start: datetime, upsells: Sequence[Opportunity],
                 alerts: Sequence[tuple[float, bool]] = KNOWN_ALERTS) -> list[AlertEvent]:
    """The receiver's alerts: one per upsell (received 5 minutes after it occurred) but the CLI's, and `alerts`
    (days after `start`, qualified) of alerts that logged no upsell."""
    events = [AlertEvent(event_id=o.event_id, received_at=o.occurred_at + timedelta(minutes=5), qualified=True)
              for o in upsells if o.playbook != FROM_THE_CLI and o.occurred_at is not None]
    return events + [AlertEvent(event_id=f"evt-{uuid.uuid4().hex[:12]}", qualified=qualified,
                                received_at=start + timedelta(days=days, hours=10)) for days, qualified in alerts]


def seed_alerts(path: Path, alerts: Sequence[AlertEvent]) -> None:
    """Alerts in the receiver's file, each received when it says (the store writes now; moved there)."""
    receiver = ReceiverStore(path)
    try:
        for alert in alerts:
            receiver.insert_alert(event_id=alert.event_id, account_id="acct-report", payload="{}",
                                  automation_level=None, qualified=alert.qualified,
                                  status="triggered" if alert.qualified else "not_qualified")
    finally:
        receiver.close()
    with sqlite3.connect(path) as db:
        db.executemany("UPDATE alerts SET received_at=? WHERE event_id=?",
                       [(a.received_at.isoformat(), a.event_id) for a in alerts])


def seed(data_dir: Path, start: datetime, upsells: Sequence[Opportunity] | None = None,
         alerts: Sequence[tuple[float, bool]] = KNOWN_ALERTS) -> None:
    """The known outcomes where the stand-in store (`<data_dir>/upsell.db`) and the receiver keep them."""
    upsells = known_upsells(start) if upsells is None else upsells
    store = SqliteOpportunityStore(data_dir / "upsell.db")
    try:
        for opportunity in upsells:
            store.upsert_opportunity(opportunity)
    finally:
        store.close()
    seed_alerts(data_dir / "receiver.db", known_alerts(start, upsells, alerts))


def recent_start() -> datetime:
    """The Monday two weeks before this one (midnight UTC): the default period of the report covers it."""
    monday = default_since(datetime.now(UTC).date(), 3)
    return datetime(monday.year, monday.month, monday.day, tzinfo=UTC)


TOTAL = Funnel(opportunities=9, emailed=7, yes=3, no=2, maybe=1, no_reply=1, meetings=2, pipeline_value=3500.0)


def check_known_numbers(report: FunnelReport, start: datetime) -> None:
    """The funnel of `known_upsells(start)` and `KNOWN_ALERTS`, counted by hand."""
    assert (report.alerts, report.qualified, report.alerts_elsewhere) == (14, 10, 1)
    assert Funnel.model_validate(report.total.model_dump()) == TOTAL
    first, second = report.weeks[0], report.weeks[1]
    assert (first.week, second.week) == (iso_week(start), iso_week(start + timedelta(days=7)))
    assert first.model_dump(exclude={"week"}) == {
        "alerts": 8, "qualified": 6, "opportunities": 5, "emailed": 3, "yes": 1, "no": 2, "maybe": 0, "no_reply": 0,
        "meetings": 1, "pipeline_value": 1000.0}
    assert second.model_dump(exclude={"week"}) == {
        "alerts": 6, "qualified": 4, "opportunities": 4, "emailed": 4, "yes": 2, "no": 0, "maybe": 1, "no_reply": 1,
        "meetings": 1, "pipeline_value": 2500.0}
    assert all(w.opportunities == w.alerts == 0 for w in report.weeks[2:])  # quiet weeks up to now show as zeros
    playbooks = {p.playbook: (p.opportunities, p.emailed, p.yes, p.pipeline_value) for p in report.playbooks}
    assert playbooks == {"growth": (7, 6, 3, 3500.0), "default": (1, 1, 0, 0.0), HOSTILE_PLAYBOOK: (1, 0, 0, 0.0)}
    variants = {(v.playbook, v.variant): v for v in report.variants}
    a, b = variants["growth", "A"], variants["growth", "B"]
    assert (a.emailed, a.yes_rate.successes, a.yes_rate.trials, a.meeting_rate.successes) == (5, 2, 5, 1)
    assert (b.emailed, b.yes_rate.rate, b.meeting_rate.rate, b.pipeline_value) == (1, 1.0, 1.0, 2000.0)
    assert variants["default", ""].yes_rate.rate == 0.0
    assert variants[HOSTILE_PLAYBOOK, HOSTILE_VARIANT].yes_rate.rate is None  # nothing emailed: no rate
    assert [(t.playbook, t.metric, t.variants) for t in report.tests] == [
        ("growth", "yes", ("A", "B")), ("growth", "meeting", ("A", "B"))]
    assert report.tests[0].verdict == "Too small to call a winner: A has 5 emailed (at least 30 per variant needed)."
    assert report.tests[0].p_value is None and report.tests[0].leader is None


# ---- the numbers ----


def test_the_funnel_counts_known_outcomes_read_from_the_stores(tmp_path: Path) -> None:
    start = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday: ISO week 2026-W02
    seed(tmp_path, start)
    receiver, store = ReceiverStore(tmp_path / "receiver.db"), SqliteOpportunityStore(tmp_path / "upsell.db")
    try:
        report = build_report(receiver.alert_events(start), store.opportunities_since(start), since=start.date(),
                              now=datetime(2026, 1, 21, 12, tzinfo=UTC))
    finally:
        receiver.close()
        store.close()
    check_known_numbers(report, start)
    assert [w.week for w in report.weeks] == ["2026-W02", "2026-W03", "2026-W04"]  # through the current week


def test_alerts_group_by_iso_week_across_a_new_year(tmp_path: Path) -> None:
    start = datetime(2025, 12, 29, tzinfo=UTC)  # Monday of ISO week 2026-W01, which starts in 2025
    alerts = known_alerts(start, [], [(0, True), (3, False), (6, True), (7, True)])
    seed_alerts(tmp_path / "receiver.db", alerts)
    receiver = ReceiverStore(tmp_path / "receiver.db")
    try:
        assert receiver.alert_events(None) == alerts
        assert receiver.alert_events(start + timedelta(days=5)) == alerts[2:]
        weeks = build_report(receiver.alert_events(None), [], since=None, now=start + timedelta(days=8)).weeks
    finally:
        receiver.close()
    assert [(w.week, w.alerts, w.qualified) for w in weeks] == [("2026-W01", 3, 2), ("2026-W02", 1, 1)]


def test_default_period_is_the_last_twelve_iso_weeks() -> None:
    assert default_since(date(2026, 1, 21)) == date(2025, 11, 3)  # a Wednesday: back to the Monday 11 weeks before
    assert default_since(date(2026, 1, 19), weeks=1) == date(2026, 1, 19)
    with pytest.raises(ValueError):
        default_since(date(2026, 1, 19), weeks=0)


def test_wilson_interval_matches_known_values() -> None:
    z = 1.959963984540054  # the 97.5th percentile of the normal distribution

    def closed_form(k: int, n: int) -> tuple[float, float]:
        p, spread = k / n, 1 + z * z / n
        centre = (p + z * z / (2 * n)) / spread
        half = z / spread * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return centre - half, centre + half

    seven = wilson(7, 20)
    assert (seven.low, seven.high) == pytest.approx((0.181192, 0.567146), abs=1e-6)
    assert (seven.low, seven.high) == pytest.approx(closed_form(7, 20))
    none = wilson(0, 10)
    assert (none.rate, none.low, none.high) == pytest.approx((0.0, 0.0, 0.277533), abs=1e-6)
    assert wilson(0, 0).rate is None  # nothing emailed: no rate, no interval


def experiment(yes_a: int, n_a: int, yes_b: int, n_b: int) -> FunnelReport:
    """A playbook's A/B test: `yes_a` of `n_a` emailed answered yes with A, `yes_b` of `n_b` with B."""
    moment = datetime(2026, 2, 3, 10, tzinfo=UTC)
    upsells = [upsell("trial", "A", moment, reply="yes" if i < yes_a else "no") for i in range(n_a)]
    upsells += [upsell("trial", "B", moment, reply="yes" if i < yes_b else "no") for i in range(n_b)]
    return build_report([], upsells, since=None, now=moment)


def test_two_proportion_test_matches_a_known_p_value_and_names_the_leader() -> None:
    yes = experiment(45, 100, 30, 100).tests[0]
    assert yes.metric == "yes" and not yes.too_small
    # pooled 0.375: z = 0.15 / sqrt(0.375 * 0.625 * 2 / 100) = 2.19089, two-sided p = erfc(z / sqrt 2)
    assert yes.z == pytest.approx(2.190890, abs=1e-6)
    assert yes.p_value == pytest.approx(math.erfc(2.190890230 / math.sqrt(2)), rel=1e-6)
    assert yes.p_value == pytest.approx(0.028460, abs=1e-6)
    assert (yes.leader, yes.verdict) == ("A", "A leads (p=0.028).")
    behind = experiment(30, 100, 45, 100).tests[0]
    assert (behind.leader, behind.verdict) == ("B", "B leads (p=0.028).")


def test_too_small_samples_say_so_plainly() -> None:
    few = experiment(5, 10, 1, 10).tests[0]
    assert few.too_small and few.p_value is None and few.leader is None
    assert few.verdict == "Too small to call a winner: A has 10 emailed (at least 30 per variant needed)."
    rare = experiment(1, 40, 1, 40).tests[0]  # enough emailed, but about one yes expected per variant
    assert rare.verdict == "Too small to call a winner: A's expected yes count is 1.0 (at least 5 needed)."
    even = experiment(10, 40, 12, 40).tests[0]
    assert not even.too_small and even.leader is None
    assert even.p_value == pytest.approx(0.616524, abs=1e-6)
    assert even.verdict == "No significant difference (p=0.617)."


def test_three_variants_are_compared_pairwise_at_a_stricter_level() -> None:
    moment = datetime(2026, 2, 3, 10, tzinfo=UTC)
    upsells = [upsell("trial", name, moment, reply="yes" if i < yes else "no")
               for name, yes in (("A", 45), ("B", 30), ("C", 40)) for i in range(100)]
    tests = [t for t in build_report([], upsells, since=None, now=moment).tests if t.metric == "yes"]
    assert [t.variants for t in tests] == [("A", "B"), ("A", "C"), ("B", "C")]
    assert all(t.alpha == pytest.approx(0.05 / 3) for t in tests)
    # p=0.028 is below 0.05 but not below 0.0167: with three pairs it is not called
    assert tests[0].verdict == "No significant difference (p=0.028; 3 pairs, judged at 0.017)."


def test_text_and_markdown_renderings(tmp_path: Path) -> None:
    start = datetime(2026, 1, 5, tzinfo=UTC)
    upsells = known_upsells(start)
    report = build_report(known_alerts(start, upsells), upsells, since=start.date(),
                          now=datetime(2026, 1, 14, tzinfo=UTC))
    text = render_text(report)
    assert re.search(r"^  Emailed\s+7  78% of upsells logged$", text, re.M)
    assert re.search(r"^  Pipeline\s+\$3,500 ", text, re.M)
    assert re.search(r"^growth\s+A\s+5\s+40\.0% \[11\.8%, 76\.9%\] \(2/5\)", text, re.M)
    markdown = render_markdown(report)
    assert "| Emailed | 7 | 78% of upsells logged |" in markdown
    assert "| 2026-W02 | 8 | 6 | 5 | 3 | 1 | 2 | 0 | 0 | 1 | $1,000 |" in markdown
    # a stored name is shown as written, never as markup
    assert "\\<img src=x onerror=alert(1)\\>" in markdown and "<img" not in markdown.replace("\\<img", "")


# ---- GET /report ----


@pytest.fixture(scope="module")
def report_receiver(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The receiver under uvicorn with the report's credentials, its stores seeded with the known outcomes."""
    tmp = tmp_path_factory.mktemp("report-receiver")
    seed(tmp, recent_start())
    settings = ReceiverSettings(
        webhook_secrets=SECRET, data_dir=tmp, receiver_db=tmp / "receiver.db", prefect_api_url=prefect_server,
        report_token=TOKEN, report_user=USER, report_password=PASSWORD,
        report_login_failures=1000,  # these tests fail on purpose; the limit is test_webhook_limits's
    )
    with ReceiverThread(settings) as server:
        yield server.url


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("authorization", [
    None, "Bearer wrong-token-0123456789abcdef", f"Bearer {TOKEN}x", f"Basic {TOKEN}", _basic(USER, "wrong-password"),
    _basic("someone", PASSWORD), "Basic !!!not-base64", "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
    f"Token {TOKEN}", "",
])
def test_report_refuses_without_valid_credentials(report_receiver: str, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    answer = httpx.get(f"{report_receiver}/report", headers=headers, timeout=30)
    assert answer.status_code == 401
    challenge = answer.headers["WWW-Authenticate"]
    assert 'Basic realm="upsell-report"' in challenge and 'Bearer realm="upsell-report"' in challenge
    assert answer.json()["error"] == "unauthorized" and "svg" not in answer.text


@pytest.mark.parametrize("how", ["bearer", "basic"])
def test_report_page_with_credentials_draws_the_funnel(report_receiver: str, how: str) -> None:
    auth = {"headers": {"Authorization": f"Bearer {TOKEN}"}} if how == "bearer" else {"auth": (USER, PASSWORD)}
    since = {"since": recent_start().date().isoformat()}  # the default, 12 weeks, has the upsells before it too
    page = httpx.get(f"{report_receiver}/report", params=since, timeout=30, **auth)  # type: ignore[arg-type]
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html") and page.headers["cache-control"] == "no-store"
    assert "script-src" not in page.headers["content-security-policy"]  # nothing runs on the page
    html = page.text
    for chart in ("funnel", "weekly", "rates"):
        assert f"<svg class='chart {chart}'" in html
    heights = [float(h) for h in re.findall(r"<rect class='bar'[^>]* height='([\d.]+)'", html)]
    assert heights and max(heights) > 0
    assert html.count("<line class='whisker'") == 6  # yes and meeting whiskers of the three emailed variants
    assert "Too small to call a winner: A has 5 emailed" in html
    assert "<td class=n>$3,500</td>" in html  # the growth playbook's pipeline
    # every stored text is escaped: the hostile playbook and variant are shown, never run
    assert "<img src=x" not in html and "<script>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "&lt;script&gt;alert(&#x27;v&#x27;)" in html


def test_report_page_from_a_given_day(report_receiver: str) -> None:
    since = (recent_start() + timedelta(days=7)).date()  # the second week only
    page = httpx.get(f"{report_receiver}/report", params={"since": since.isoformat()}, auth=(USER, PASSWORD),
                     timeout=30)
    assert page.status_code == 200
    assert f"since {since:%Y-%m-%d}" in page.text and f"value='{since:%Y-%m-%d}'" in page.text
    assert "<td>growth</td><td>B</td><td class=n>1</td>" in page.text
    assert "<td>default</td>" not in page.text  # its one upsell was in the first week


def test_report_is_not_served_without_configured_credentials(tmp_path: Path) -> None:
    app = create_app(ReceiverSettings(webhook_secrets=SECRET, data_dir=tmp_path))
    answer = TestClient(app).get("/report", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 404
    assert answer.json()["error"] == "report_not_enabled" and "UPSELL_REPORT_TOKEN" in answer.json()["detail"]
    paths = app.openapi()["paths"]  # documented in /docs: a page for people, and its sign-in
    assert "text/html" in paths["/report"]["get"]["responses"]["200"]["content"]
    assert "text/html" in paths["/report"]["get"]["responses"]["401"]["content"]
    assert "application/x-www-form-urlencoded" in paths["/report/login"]["post"]["requestBody"]["content"]
    assert TestClient(app).post("/report/login", data={"token": TOKEN}).status_code == 404


# ---- signing in from a browser ----

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def test_a_browser_without_credentials_gets_the_sign_in_page(report_receiver: str) -> None:
    for _ in range(3):  # a visit without credentials is not a failed login
        answer = httpx.get(f"{report_receiver}/report", headers=BROWSER, timeout=30)
        assert answer.status_code == 401 and answer.headers["content-type"].startswith("text/html")
        assert answer.headers["WWW-Authenticate"].startswith('Basic realm="upsell-report"')  # the browser asks
        assert "<form method=post action='/report/login'>" in answer.text and "name=token" in answer.text
        assert "user name and password" in answer.text and "<svg" not in answer.text
        assert answer.headers["cache-control"] == "no-store" and "form-action 'self'" in answer.headers[
            "content-security-policy"]
    wrong = httpx.get(f"{report_receiver}/report", headers={**BROWSER, "Authorization": _basic(USER, "nope")},
                      timeout=30)
    assert wrong.status_code == 401 and "<form" in wrong.text  # wrong credentials: the page again, not JSON


def test_signing_in_with_the_token_sets_a_session_cookie_that_opens_the_report(report_receiver: str) -> None:
    since = {"since": recent_start().date().isoformat()}
    with httpx.Client(base_url=report_receiver, headers=BROWSER, timeout=30) as browser:
        wrong = browser.post("/report/login", data={"token": "not-the-token-0123456789"})
        assert wrong.status_code == 401 and "That is not the report&#x27;s token." in wrong.text
        assert REPORT_COOKIE not in browser.cookies
        signed_in = browser.post("/report/login", data={"token": TOKEN})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/report"
        cookie = signed_in.headers["set-cookie"]
        assert cookie.startswith(f"{REPORT_COOKIE}=") and TOKEN not in cookie
        assert {"HttpOnly", "Path=/report", "SameSite=strict", "Max-Age=28800"} <= {
            part.strip() for part in cookie.split(";")}
        assert "secure" not in cookie.lower()  # plain http here; over https the cookie is Secure (below)
        page = browser.get("/report", params=since)
        assert page.status_code == 200 and "<svg class='chart funnel'" in page.text
        value = browser.cookies[REPORT_COOKIE]
        for forged in (value[:-1] + ("0" if value[-1] != "0" else "1"), "99999999999.x", "",
                       f"{int(time.time()) - 1}.{value.partition('.')[2]}"):
            browser.cookies.set(REPORT_COOKIE, forged, path="/report")
            assert browser.get("/report", params=since).status_code == 401


def test_the_session_cookie_is_secure_over_https(tmp_path: Path) -> None:
    app = create_app(ReceiverSettings(webhook_secrets=SECRET, data_dir=tmp_path, report_token=TOKEN))
    answer = TestClient(app, base_url="https://testserver").post("/report/login", data={"token": TOKEN},
                                                                 follow_redirects=False)
    assert answer.status_code == 303 and "Secure" in {p.strip() for p in answer.headers["set-cookie"].split(";")}
    expired = new_session(app.state.settings, now=time.time() - REPORT_SESSION_S - 1)
    assert not session_valid(expired, app.state.settings) and session_valid(new_session(app.state.settings),
                                                                            app.state.settings)
    other = ReceiverSettings(webhook_secrets=SECRET, data_dir=tmp_path, report_token=TOKEN + "-new")
    assert not session_valid(new_session(app.state.settings), other)  # a new token ends every session


def test_the_sign_in_form_counts_toward_the_failed_login_limit(tmp_path: Path) -> None:
    app = create_app(ReceiverSettings(webhook_secrets=SECRET, data_dir=tmp_path, report_token=TOKEN,
                                      report_login_failures=2))
    client = TestClient(app)
    assert [client.post("/report/login", data={"token": "wrong-token-0123456789"}).status_code
            for _ in range(2)] == [401, 401]
    refused = client.post("/report/login", data={"token": TOKEN}, follow_redirects=False)  # even the right one
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert "Too many failed sign-ins" in refused.text
    assert client.get("/report", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 429  # one limit
    too_many = client.post("/report/login", content="&".join(f"f{i}=x" for i in range(20)),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert too_many.status_code == 429


def test_report_credentials_in_the_settings_are_whole_and_long_enough() -> None:
    for wrong in ({"report_user": USER}, {"report_password": PASSWORD}, {"report_token": "short"},
                  {"report_user": USER, "report_password": "short"},
                  {"report_user": "a:b", "report_password": PASSWORD}):
        with pytest.raises(ValidationError):
            ReceiverSettings(webhook_secrets=SECRET, **wrong)  # type: ignore[arg-type]


# ---- upsell report ----


def cli() -> typer.Typer:
    """`report_command` registered as the lead registers it in deployments/cli.py."""
    app = typer.Typer()
    app.command("report")(report_command)
    return app


def test_report_command_prints_the_table_and_the_json(data_dir: Path) -> None:
    start = datetime(2026, 1, 5, tzinfo=UTC)
    seed(data_dir, start)  # the data folder of this test is UPSELL_DATA_DIR
    text = CliRunner().invoke(cli(), ["--since", "2026-01-05"])
    assert text.exit_code == 0, text.output
    assert text.output.startswith("Upsell funnel, since 2026-01-05")
    assert re.search(r"^  Alerts\s+14$", text.output, re.M) and re.search(r"^  Meetings\s+2  29% of emailed$",
                                                                            text.output, re.M)
    assert "Too small to call a winner: A has 5 emailed" in text.output

    as_json = CliRunner().invoke(cli(), ["--since", "2026-01-05", "--json"])
    assert as_json.exit_code == 0, as_json.output
    check_known_numbers(FunnelReport.model_validate_json(as_json.output), start)


def test_report_command_refuses_a_wrong_date_and_says_when_there_is_no_receiver_file(data_dir: Path) -> None:
    wrong = CliRunner().invoke(cli(), ["--since", "05/01/2026"])
    assert wrong.exit_code == 2 and "YYYY-MM-DD" in wrong.output
    empty = CliRunner().invoke(cli(), ["--json"])
    assert empty.exit_code == 0, empty.output
    report = FunnelReport.model_validate_json(empty.output)
    assert report.total == Funnel() and report.weeks == []
    assert report.notes and "No receiver file" in report.notes[0]


# ---- the weekly flow ----


def _artifact(artifact_id: str) -> Any:
    with get_client(sync_client=True) as client:
        (found,) = client.read_artifacts(artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[UUID(artifact_id)])))
        assert client.read_flow_run(found.flow_run_id).name.startswith("funnel-report-")  # the run list says what
    return found


def test_weekly_flow_publishes_the_funnel_artifact(data_dir: Path) -> None:
    start = recent_start()
    seed(data_dir, start)
    artifact = _artifact(upsell_report(since=start.date()))
    assert artifact.key == ARTIFACT_KEY and artifact.type == "markdown"
    assert artifact.description == (f"Upsell funnel since {start:%Y-%m-%d}: 7 emailed, 3 answered yes, 2 meetings, "
                                    "pipeline $3,500")
    markdown = str(artifact.data)
    assert markdown.startswith("# Upsell funnel") and "| Emailed | 7 | 78% of upsells logged |" in markdown
    assert f"| {iso_week(start)} | 8 | 6 | 5 | 3 | 1 | 2 | 0 | 0 | 1 | $1,000 |" in markdown
    assert "Too small to call a winner: A has 5 emailed" in markdown

    # by default the last 12 ISO weeks: the two upsells of the weeks before the start count too
    default = _artifact(upsell_report())
    assert default.description == (f"Upsell funnel since {default_since(datetime.now(UTC).date()):%Y-%m-%d}: "
                                   "9 emailed, 5 answered yes, 2 meetings, pipeline $203,498")


def test_upsell_up_prints_the_report_url(tmp_path: Path) -> None:
    from deployments.cli import _up_banner

    banner = _up_banner("http://127.0.0.1:4200/api", False, "http://127.0.0.1:8000", "http://127.0.0.1:8000", tmp_path,
                        "", tmp_path / "stack.json")
    assert "\nFunnel report   http://127.0.0.1:8000/report   (sign in with UPSELL_REPORT_TOKEN" in banner
