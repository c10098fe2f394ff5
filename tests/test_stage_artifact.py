"""The stage artifact a sales team reads in the Prefect UI: what the run waits for (and until when), the answers
given (who, the value, the note), numbers written for people, no internal details."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from flows.models import UpsellStage, UsageAlert
from flows.upsell import upsell
from tasks.runtime.progress import render_journal
from tests.support import find_run_id, resume, wait_until_paused

DUE = datetime(2026, 12, 4, 9, 0, 30, tzinfo=UTC)
ALERT = UsageAlert(event_id="evt-artifact", account_id="12345", metric_type="trade_volume", current_value=35271.0,
                   threshold=30000, severity="high")  # fmt: skip


def stage(name: UpsellStage, **details: object) -> dict:
    return {"stage": name.value, "details": details}


def until_reply() -> list[dict]:
    """The journal of a run that sent its email and waits for the customer's reply."""
    return [
        stage(UpsellStage.STARTED, automation_level="HYBRID", standins="email, planner"),
        stage(UpsellStage.FETCHING_DATA, current_plan="Starter", usage=35271.0, over_threshold="18%", trend="stable"),
        stage(UpsellStage.AI_ANALYSIS, recommended_plan="Professional", estimated_value=35271.0, planner="rule-based"),
        stage(UpsellStage.EMAIL_SENT, email="sent", message_id="<internal-id@example>", to="buyer@example.com"),
        stage(UpsellStage.SLACK_POSTED, slack="posted"),
        stage(UpsellStage.WAITING_REPLY, event="upsell.reply.waiting"),
        {"wait": "reply", "due": DUE.isoformat()},
    ]


def row(markdown: str, name: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith(f"| {name} |"))


def test_a_stage_being_waited_on_shows_waiting_and_when_the_answer_is_due():
    markdown = render_journal(ALERT, until_reply())
    assert row(markdown, "Waiting Reply") == "| Waiting Reply | waiting | answer due by 2026-12-04 09:00 UTC |"
    assert "**Current stage:** Waiting for the customer's reply (answer due by 2026-12-04 09:00 UTC)" in markdown
    assert row(markdown, "Meeting Scheduled") == "| Meeting Scheduled | - |  |"

    answered = until_reply() + [{"wait": "reply", "answered": True, "details": {"reply": "yes"}},
                                stage(UpsellStage.WAITING_REPLY, reply="yes")]  # fmt: skip
    assert row(render_journal(ALERT, answered), "Waiting Reply") == "| Waiting Reply | done | customer replied: yes |"


def test_a_wait_for_a_review_shows_as_the_review_not_as_the_reply():
    journal = until_reply() + [
        {"wait": "reply", "answered": True, "details": {"reply": "maybe"}},
        stage(UpsellStage.WAITING_REPLY, reply="maybe"),
        {"wait": "review", "due": DUE.isoformat()},
    ]
    markdown = render_journal(ALERT, journal)
    assert "**Current stage:** Waiting for review (answer due by 2026-12-04 09:00 UTC)" in markdown
    assert row(markdown, "Waiting Reply").startswith("| Waiting Reply | done |")
    assert row(markdown, "Review") == "| Review | waiting | answer due by 2026-12-04 09:00 UTC |"
    names = [line.split(" | ")[0].removeprefix("| ") for line in markdown.splitlines() if line.startswith("| ")]
    assert names.index("Review") == names.index("Waiting Reply") + 1  # in the order of the design
    assert names.index("Meeting Scheduled") == names.index("Review") + 1


def test_an_answered_approval_shows_who_decided_the_value_and_the_note():
    journal = until_reply()[:3] + [
        {"wait": "approve-email", "due": DUE.isoformat()},
        {"wait": "approve-email", "answered": True,
         "details": {"decision": "approved", "by": "Dana Reviewer", "edited": "subject", "note": "tone is fine"}},
        {"wait": "approve-opportunity", "answered": True,
         "details": {"decision": "approved", "estimated_value": 1234.5, "note": "checked"}},
    ]  # fmt: skip
    markdown = render_journal(ALERT, journal)
    assert row(markdown, "Email approval") == (
        "| Email approval | done | decision: approved; by: Dana Reviewer; edited: subject; note: tone is fine |"
    )
    assert "| Opportunity approval | done | decision: approved; estimated value: $1,234.50/yr; note: checked |" in (
        markdown
    )


def test_the_draft_is_shown_whole_and_long_details_go_below_the_table():
    draft = {"to": "buyer@example.com", "subject": "More room for Acme",
             "message": "Hi Lena,\n\nYour team reached 35,271 trades.\n\n- No cap\n- Priority support"}
    note = "the customer asked for a call on Thursday afternoon with their finance lead, and a quote in euros"
    journal = until_reply()[:3] + [
        {"draft": draft},
        {"wait": "approve-email", "due": DUE.isoformat()},
        {"wait": "approve-email", "answered": True, "details": {"decision": "approved", "note": note}},
    ]  # fmt: skip
    markdown = render_journal(ALERT, journal)
    assert "### The email to buyer@example\\.com" in markdown and "> Subject: More room for Acme" in markdown
    for line in ("> Hi Lena,", "> Your team reached 35,271 trades\\.", "> \\- No cap", "> \\- Priority support"):
        assert line in markdown.splitlines(), line
    assert row(markdown, "Email approval") == "| Email approval | done | details below the table |"
    assert f"- note: {note}" in markdown  # whole, on its own line: the page wraps it
    assert max(len(line) for line in markdown.splitlines() if line.startswith("|")) < 140


def test_numbers_are_written_for_people_and_internal_details_are_left_out():
    markdown = render_journal(ALERT, until_reply())
    assert "**Trigger:** trade volume 35,271 (threshold 30,000), severity high" in markdown
    assert "usage: 35,271" in row(markdown, "Fetching Data")
    assert "estimated value: $35,271/yr" in row(markdown, "AI Analysis")
    assert "automation: hybrid" in row(markdown, "Started") and "simulated services: email, planner" in markdown
    for internal in ("35271.0", "timeout_s", "internal-id", "upsell.reply.waiting", "HYBRID", "message_id"):
        assert internal not in markdown, internal


def test_an_alert_without_value_or_threshold_prints_no_none():
    cli_alert = UsageAlert(event_id="evt-cli", account_id="12345", metric_type="trade_volume")
    markdown = render_journal(cli_alert, [stage(UpsellStage.STARTED, automation_level="HYBRID")])
    assert "None" not in markdown
    assert "**Trigger:** trade volume, severity high" in markdown


def latest_artifact(alert: UsageAlert):
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"upsell-{alert.slug}"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )[0]


def test_the_published_artifact_follows_the_review_of_a_real_run(event_id):
    alert = UsageAlert(event_id=event_id, account_id="12345", metric_type="trade_volume", current_value=150,
                       threshold=100, severity="high")  # fmt: skip
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(upsell, alert)
        run_id = find_run_id(alert.run_name)
        wait_until_paused(run_id, "reply")
        assert row(latest_artifact(alert).data, "Waiting Reply").startswith("| Waiting Reply | waiting | answer due by")
        resume(run_id, "reply", {"reply": "yes"})
        wait_until_paused(run_id, "review")
        waiting = latest_artifact(alert)
        assert "**Current stage:** Waiting for review (answer due by" in waiting.data
        assert row(waiting.data, "Review").startswith("| Review | waiting | answer due by")
        assert row(waiting.data, "Waiting Reply") == "| Waiting Reply | done | customer replied: yes |"
        assert waiting.description.endswith("(waiting for review): Waiting Reply")  # the receiver reads the stage
        resume(run_id, "review", {"approved": True, "estimated_value": 4321.0, "note": "checked the numbers"})
        future.result(timeout=60)
    final = latest_artifact(alert).data
    assert row(final, "Review") == (
        "| Review | done | decision: approved; estimated value: $4,321/yr; note: checked the numbers |"
    )
    assert "**Current stage:** Completed (Won)" in final and "| Meeting Scheduled | done |" in final
    assert "### The email to" in final and "> Subject: " in final  # the draft, whole, below the table


def test_the_reviewer_who_gives_a_name_is_recorded_with_the_answer():
    from flows.inputs import WaitRequest
    from flows.models import OpportunityReview
    from flows.upsell import answer_details

    request = WaitRequest("review", OpportunityReview, 60, "Review", {"approved": False, "estimated_value": 100.0})
    answer = OpportunityReview(approved=True, estimated_value=150, note="checked", reviewer="Dana Reviewer")
    assert answer_details(request, answer) == {
        "decision": "approved", "by": "Dana Reviewer", "estimated_value": 150.0, "note": "checked"
    }  # fmt: skip
    assert "by" not in answer_details(request, OpportunityReview(approved=False, estimated_value=0))
