"""The upsell flow: a usage alert becomes an emailed offer, a Slack summary, a meeting and an opportunity."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from pydantic import BaseModel

from flows.models import (
    AutomationLevel,
    ContractData,
    CustomerReply,
    CustomerReplyInput,
    EmailApproval,
    EmailDraft,
    EmailResult,
    MeetingApproval,
    Opportunity,
    OpportunityReview,
    PlanResult,
    SlackResult,
    UpsellOutcome,
    UpsellStage,
    UpsellStatus,
    UsageAlert,
    UsageData,
    WaitKind,
    automation_level_for,
)
from tasks.ask_claude_for_plan import ask_claude_for_plan
from tasks.content.email import text_to_html
from tasks.content.untrusted import UnsafeData
from tasks.create_zoom_meeting import create_zoom_meeting
from tasks.fetch_contract import fetch_contract
from tasks.fetch_usage import fetch_usage
from tasks.log_opportunity import log_opportunity
from tasks.post_slack_summary import post_slack_summary
from tasks.runtime.links import LinkToken, link_for
from tasks.runtime.progress import announce_integrations, collect_timings, publish_journal, publish_stage
from tasks.runtime.settings import UpsellSettings, get_settings
from tasks.runtime.waits import WaitDeadline, open_wait, opened_waits
from tasks.send_email_draft import draft_email, send_email_draft

R = TypeVar("R", bound=RunInput)
M = TypeVar("M", bound=BaseModel)


def upsell_run_name() -> str:
    """`upsell-{account_id}-{event_id}-{YYYYMMDD-HHMMSS}` from the alert parameter."""
    return UsageAlert.model_validate(flow_run.parameters["alert"]).run_name


class Journal:
    """What the run has reached: stages (each published once) and step results (picked up when resumed).

    A resumed run replays the flow from the top up to the wait it was resumed from. Each wait opened in an
    earlier segment recorded the results of the steps done before it: a replayed step takes its result from
    there instead of running again (no task run, no API call). Stages reached before the last of those waits
    were published then, so until that wait is passed they are only collected again, not published.
    Each stage is an event and a log line when reached; the run's markdown artifact is republished when the
    run waits, ends or fails.
    """

    def __init__(self, alert: UsageAlert, opened: dict[str, WaitDeadline]) -> None:
        self.alert = alert
        self.entries: list[dict[str, Any]] = []
        self.replay_waits = set(opened)
        self.results: dict[str, Any] = {}
        for record in opened.values():  # oldest first: a later wait's record holds everything done before it
            self.results.update(record.steps)

    @property
    def replaying(self) -> bool:
        return bool(self.replay_waits)

    def step(self, name: str, result_type: type[M], run: Callable[[], M]) -> M:
        """The step's result: recorded by an earlier segment, or `run()` now (a task) and recorded."""
        if name in self.results:
            return result_type.model_validate(self.results[name])
        result = run()
        self.results[name] = result.model_dump(mode="json")
        return result

    def reach(self, stage: UpsellStage, **details: Any) -> None:
        self.entries.append({"stage": stage.value, "details": {k: v for k, v in details.items() if v is not None}})
        if not self.replaying:
            publish_stage(self.alert, list(self.entries))

    def publish(self) -> None:
        """Republish the run's markdown artifact (stages so far), unless an earlier segment already did."""
        if not self.replaying and self.entries:
            publish_journal(self.alert, list(self.entries))

    def passed(self, wait: WaitKind) -> None:
        self.replay_waits.discard(wait)


def wait_for(
    journal: Journal,
    kind: WaitKind,
    input_type: type[R],
    timeout_s: float,
    settings: UpsellSettings,
    description: str,
    **initial: Any,
) -> R:
    """Wait for a typed input. A deployment run suspends (no process held); a direct call pauses in place.

    Prefect's own timeout is the deadline plus a grace period: the `reply-timeouts` sweep closes expired
    waits first, so that an unanswered wait ends the run Completed rather than Failed.
    """
    if kind not in journal.replay_waits:  # a wait opened in an earlier segment keeps its first record
        journal.publish()
        open_wait(kind, timeout_s, journal.results)
    form = input_type.with_initial_data(description=description, **initial)
    safety_timeout = int(timeout_s + settings.wait_grace_s)
    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None and context.flow_run.deployment_id is not None:
        answer = suspend_flow_run(wait_for_input=form, timeout=safety_timeout, key=kind)
    else:
        answer = pause_flow_run(
            wait_for_input=form, timeout=safety_timeout, poll_interval=settings.pause_poll_s, key=kind
        )
    journal.passed(kind)
    return answer


def _decision_link(settings: UpsellSettings, wait: str, value: dict[str, Any], event_id: str) -> str:
    import time

    token = LinkToken(
        flow_run_id=str(flow_run.get_id()),
        wait=wait,
        value=value,
        expires_at=int(time.time() + settings.link_ttl_s),
        nonce=event_id,
    )
    return link_for(settings.public_base_url, settings.link_secret.get_secret_value(), token)


@flow(name="upsell", flow_run_name=upsell_run_name, persist_result=True, validate_parameters=True)
def upsell(
    alert: UsageAlert,
    automation_level: AutomationLevel | None = None,
    reply_timeout_s: float | None = None,
    approval_timeout_s: float | None = None,
) -> UpsellOutcome:
    """Turn a usage alert into an upsell: data, plan, email, Slack, reply, meeting, opportunity."""
    journal = Journal(alert, opened_waits())
    try:
        return run_upsell(journal, automation_level, reply_timeout_s, approval_timeout_s)
    except Exception:  # a failed step: the artifact still shows how far the run got (a wait is not an Exception)
        journal.publish()
        raise


def stop_for_review(journal: Journal, level: AutomationLevel, standins: list[str], reason: str) -> UpsellOutcome:
    """End the upsell `needs_review` before any message: the opportunity is logged with the reason for a human."""
    alert = journal.alert
    get_run_logger().warning("Upsell for event %s needs review: %s", alert.event_id, reason)
    opportunity_id = log_opportunity(
        Opportunity(
            opportunity_id=alert.opportunity_id,
            event_id=alert.event_id,
            account_id=alert.account_id,
            metric_type=alert.metric_type,
            automation_level=level,
            status=UpsellStatus.NEEDS_REVIEW,
            recommended_plan="",
            estimated_value=0.0,
            planner="none",
            reply=CustomerReply.NO_REPLY,
            reviewer_note=reason,
            flow_run_id=str(flow_run.get_id()),
            occurred_at=alert.occurred_at,
        )
    )
    journal.reach(UpsellStage.COMPLETED, status=UpsellStatus.NEEDS_REVIEW.value, reason=reason)
    journal.publish()
    return UpsellOutcome(
        status=UpsellStatus.NEEDS_REVIEW,
        event_id=alert.event_id,
        account_id=alert.account_id,
        automation_level=level,
        email_sent=False,
        email_status="not_sent",
        opportunity_id=opportunity_id,
        reviewer_note=reason,
        standins=standins,
        timings=collect_timings(),
    )


def run_upsell(
    journal: Journal,
    automation_level: AutomationLevel | None,
    reply_timeout_s: float | None,
    approval_timeout_s: float | None,
) -> UpsellOutcome:
    """The body of the `upsell` flow (its steps are tasks; its waits suspend the run)."""
    alert = journal.alert
    settings = get_settings()
    level = automation_level or automation_level_for(alert.severity, settings.severity_levels)
    reply_timeout = reply_timeout_s or settings.reply_timeout_s
    approval_timeout = approval_timeout_s or settings.approval_timeout_s

    standins = announce_integrations(log=not journal.replaying)
    journal.reach(UpsellStage.STARTED, automation_level=level.value, standins=", ".join(standins) or "none")

    try:  # data that cannot be made safe stops the upsell here, before anything is written to anyone
        usage = journal.step("usage", UsageData, lambda: fetch_usage(alert))
        contract = journal.step("contract", ContractData, lambda: fetch_contract(alert.account_id))
        journal.reach(
            UpsellStage.FETCHING_DATA,
            current_plan=contract.current_plan,
            usage=usage.current_usage,
            over_threshold=f"{usage.threshold_exceeded:.0%}",
            trend=usage.usage_trend,
        )
        planned = journal.step("plan", PlanResult, lambda: ask_claude_for_plan(usage, contract))
    except UnsafeData as exc:
        return stop_for_review(journal, level, standins, f"stopped before any message: {exc}")
    plan = planned.plan
    journal.reach(
        UpsellStage.AI_ANALYSIS,
        recommended_plan=plan.recommended_plan,
        estimated_value=plan.estimated_value,
        planner=planned.planner,
    )

    def finish(
        status: UpsellStatus,
        *,
        email: EmailResult | None = None,
        reply: CustomerReply | None = None,
        log: Opportunity | None = None,
        **extra: Any,
    ) -> UpsellOutcome:
        opportunity_id = log_opportunity(log) if log is not None else None
        journal.reach(UpsellStage.COMPLETED, status=status.value, opportunity_id=opportunity_id)
        journal.publish()
        return UpsellOutcome(
            status=status,
            event_id=alert.event_id,
            account_id=alert.account_id,
            automation_level=level,
            email_sent=bool(email and email.delivered),
            email_status=email.status if email else "not_sent",
            reply=reply,
            opportunity_id=opportunity_id,
            standins=standins,
            timings=collect_timings(),
            planner=planned.planner,
            planner_reason=planned.reason,
            unknown_outcomes=list(unknown),
            **extra,
        )

    def opportunity(status: UpsellStatus, reply: CustomerReply, email: EmailResult, **fields: Any) -> Opportunity:
        return Opportunity(
            opportunity_id=alert.opportunity_id,
            event_id=alert.event_id,
            account_id=alert.account_id,
            metric_type=alert.metric_type,
            automation_level=level,
            status=status,
            recommended_plan=plan.recommended_plan,
            estimated_value=fields.pop("estimated_value", plan.estimated_value),
            planner=planned.planner,
            reply=reply,
            email_message_id=email.message_id,
            flow_run_id=str(flow_run.get_id()),
            occurred_at=alert.occurred_at,
            **fields,
        )

    unknown: list[str] = []  # outward steps an earlier attempt died in: never repeated, flagged for a human
    draft = journal.step("draft", EmailDraft, lambda: draft_email(alert, usage, contract, plan))
    if level is AutomationLevel.HUMAN_INTERVENTION:
        approval = wait_for(
            journal,
            "approve-email",
            EmailApproval,
            approval_timeout,
            settings,
            f"Approve the upsell email to {draft.to} recommending **{plan.recommended_plan}**"
            f" (est. ${plan.estimated_value:,.0f}/yr). Edit the subject or body before approving.",
            approved=True,
            subject=draft.subject,
            body_text=draft.body_text,
        )
        if not approval.approved:
            return finish(UpsellStatus.REJECTED, reviewer_note=approval.note)
        if (approval.subject, approval.body_text) != (draft.subject, draft.body_text):
            draft = draft.model_copy(
                update={
                    "subject": approval.subject or draft.subject,
                    "body_text": approval.body_text or draft.body_text,
                    "body_html": text_to_html(approval.body_text) if approval.body_text else draft.body_html,
                }
            )

    email = journal.step("email", EmailResult, lambda: send_email_draft(alert, draft))
    if email.status == "suppressed":
        return finish(
            UpsellStatus.SUPPRESSED,
            email=email,
            reply=CustomerReply.NO_REPLY,
            log=opportunity(UpsellStatus.SUPPRESSED, CustomerReply.NO_REPLY, email),
        )
    journal.reach(UpsellStage.EMAIL_SENT, status=email.status, message_id=email.message_id, to=draft.to)

    decision_links: dict[str, str] = {}
    if level is not AutomationLevel.FULL_AUTOMATION:
        wait = "review" if level is AutomationLevel.HYBRID else "approve-opportunity"
        decision_links = {
            "approve": _decision_link(
                settings,
                wait,
                {"approved": True, "estimated_value": plan.estimated_value, "note": "approved from Slack"},
                alert.event_id,
            ),
            "reject": _decision_link(
                settings,
                wait,
                {"approved": False, "estimated_value": plan.estimated_value, "note": "rejected from Slack"},
                alert.event_id,
            ),
        }

    def post_summary() -> SlackResult:
        state = post_slack_summary(alert, level, contract, planned, email, decision_links, return_state=True)
        if state.is_completed():
            return state.result()
        # Slack is non-critical: the failure is recorded on the run and the upsell goes on
        return SlackResult(posted=False, error=str(state.message or state.name))

    slack = journal.step("slack", SlackResult, post_summary)
    journal.reach(UpsellStage.SLACK_POSTED, posted=slack.posted, error=slack.error, withheld=slack.withheld or None)
    if slack.outcome_unknown:
        unknown.append("Slack summary")
    if slack.withheld and level is AutomationLevel.FULL_AUTOMATION:
        level = AutomationLevel.HYBRID  # the summary failed the safety check: a human reviews before the final steps

    if email.status in ("unknown", "blocked"):
        if email.status == "unknown":
            unknown.insert(0, "email")
        why = "email outcome unknown" if email.status == "unknown" else "email withheld by the safety check"
        return finish(
            UpsellStatus.NEEDS_REVIEW,
            email=email,
            slack_posted=slack.posted,
            reviewer_note=f"{why}: {email.detail}",
            log=opportunity(
                UpsellStatus.NEEDS_REVIEW,
                CustomerReply.NO_REPLY,
                email,
                reviewer_note=f"{why}: {email.detail}",
            ),
        )

    journal.reach(UpsellStage.WAITING_REPLY, event="upsell.reply.waiting", timeout_s=reply_timeout)
    reply = wait_for(
        journal,
        "reply",
        CustomerReplyInput,
        reply_timeout,
        settings,
        f"The customer's answer to the upsell email ({plan.recommended_plan}) sent to {draft.to}.",
    ).reply
    journal.reach(UpsellStage.WAITING_REPLY, reply=reply.value)

    estimated_value, note = plan.estimated_value, ""
    if level is AutomationLevel.HYBRID:
        review = wait_for(
            journal,
            "review",
            OpportunityReview,
            approval_timeout,
            settings,
            ("The Slack summary was withheld by the safety check. " if slack.withheld else "")
            + f"Customer replied **{reply.value}**. Approve the upsell to {plan.recommended_plan}"
            f" ({'a meeting will be booked and ' if reply is CustomerReply.YES else ''}the opportunity logged).",
            approved=True,
            estimated_value=plan.estimated_value,
        )
        if not review.approved:
            return finish(
                UpsellStatus.REJECTED,
                email=email,
                reply=reply,
                slack_posted=slack.posted,
                reviewer_note=review.note,
            )
        estimated_value, note = review.estimated_value, review.note

    meeting = None
    if reply is CustomerReply.YES:
        if level is AutomationLevel.HUMAN_INTERVENTION:
            decision = wait_for(
                journal,
                "approve-meeting",
                MeetingApproval,
                approval_timeout,
                settings,
                f"The customer said yes. Book a meeting with {draft.to}?",
                approved=True,
            )
            if not decision.approved:
                return finish(
                    UpsellStatus.REJECTED,
                    email=email,
                    reply=reply,
                    slack_posted=slack.posted,
                    reviewer_note=decision.note,
                )
        meeting = create_zoom_meeting(alert, contract, plan)
        if meeting is None:  # an earlier attempt died while booking it
            unknown.append("Zoom meeting")
        else:
            journal.reach(
                UpsellStage.MEETING_SCHEDULED, join_url=meeting.join_url, start_time=meeting.start_time.isoformat()
            )

    if level is AutomationLevel.HUMAN_INTERVENTION:
        review = wait_for(
            journal,
            "approve-opportunity",
            OpportunityReview,
            approval_timeout,
            settings,
            f"Log the opportunity for {alert.account_id} ({plan.recommended_plan}, reply {reply.value})?",
            approved=True,
            estimated_value=plan.estimated_value,
        )
        if not review.approved:
            return finish(
                UpsellStatus.REJECTED,
                email=email,
                reply=reply,
                meeting=meeting,
                slack_posted=slack.posted,
                reviewer_note=review.note,
            )
        estimated_value, note = review.estimated_value, review.note

    status = UpsellStatus.COMPLETED
    if unknown:  # done, but a human checks whether the step an earlier attempt died in reached the customer
        status = UpsellStatus.NEEDS_REVIEW
        note = "; ".join(filter(None, [note, f"outcome unknown (an attempt died during it): {', '.join(unknown)}"]))
    return finish(
        status,
        email=email,
        reply=reply,
        meeting=meeting,
        slack_posted=slack.posted,
        reviewer_note=note,
        log=opportunity(
            status,
            reply,
            email,
            estimated_value=estimated_value,
            meeting_join_url=meeting.join_url if meeting else None,
            reviewer_note=note,
        ),
    )
