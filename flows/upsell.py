"""The upsell flow: a usage alert becomes an emailed offer, a Slack summary, a meeting and an opportunity.

`run_upsell` is the design's eight steps in order; which human decisions each automation level waits for, and
where, is the table in `flows.approvals`; what each wait asks for is in `flows.inputs`. Each decision a person
is asked for is announced in Slack when it opens (`UpsellRun.decide`), and the run ends Completed under a name
for its outcome (`final_state`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from prefect import State, Task, flow, get_run_logger
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.states import Completed
from pydantic import BaseModel, ValidationError

from flows import approvals, inputs
from flows.approvals import Checkpoint
from flows.inputs import WaitRequest, wait_for_input
from flows.models import (
    EXPIRED_WAIT_INPUT,
    WAIT_INPUTS,
    AutomationLevel,
    ContractData,
    CustomerReply,
    CustomerReplyInput,
    EmailDraft,
    EmailResult,
    Meeting,
    Opportunity,
    PlanResult,
    SlackResult,
    UpsellOutcome,
    UpsellPlan,
    UpsellStage,
    UpsellStatus,
    UsageAlert,
    UsageData,
    WaitKind,
    automation_level_for,
)
from flows.playbooks import DEFAULT_PLAYBOOK, Playbook, PlaybookFile, Variant, load_playbooks
from flows.send_windows import describe_wait, next_send_time
from flows.variants import choose_variant
from tasks.ask_claude_for_plan import ask_claude_for_plan
from tasks.content.untrusted import UnsafeData
from tasks.create_zoom_meeting import create_zoom_meeting, next_business_slot
from tasks.fetch_contract import fetch_contract
from tasks.fetch_usage import fetch_usage
from tasks.log_opportunity import log_opportunity
from tasks.notify_reviewer import notify_reviewer
from tasks.post_slack_summary import post_slack_summary
from tasks.runtime.flow_runs import record_on_this_run
from tasks.runtime.links import LinkToken, link_for
from tasks.runtime.policy import configured
from tasks.runtime.progress import announce_integrations, collect_timings, publish_journal, publish_stage
from tasks.runtime.settings import UpsellSettings, get_settings
from tasks.runtime.waits import WaitDeadline, open_wait, opened_waits
from tasks.send_email_draft import draft_email, draft_follow_up, send_email_draft, send_follow_up

R = TypeVar("R", bound=RunInput)
P = ParamSpec("P")
T = TypeVar("T")
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
    Each stage is an event and a log line when reached; each wait and its answer are entries too (shown in the
    artifact, not sent as events); the run's markdown artifact is republished when the run waits, ends or fails.
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

    def drafted(self, draft: EmailDraft) -> None:
        """The email as drafted (or as approved): shown whole below the artifact's table."""
        self.entries.append({"draft": {"to": draft.to, "subject": draft.subject,
                                       "message": draft.message or draft.body_text}})

    def waiting(self, wait: WaitKind, due: datetime) -> None:
        """The run waits for `wait` until `due` (shown as `waiting` in the artifact until it is answered)."""
        self.entries.append({"wait": wait, "due": due.isoformat()})

    def answered(self, wait: WaitKind, details: dict[str, Any]) -> None:
        """`wait` was answered: its row of the artifact shows `done` and what the answer said."""
        self.entries.append({"wait": wait, "answered": True, "details": details})


@flow(name="upsell", flow_run_name=upsell_run_name, persist_result=True, validate_parameters=True)
def upsell(
    alert: UsageAlert,
    automation_level: AutomationLevel | None = None,
    reply_timeout_s: float | None = None,
    approval_timeout_s: float | None = None,
    playbook: str | None = None,
) -> State[UpsellOutcome]:
    """Turn a usage alert into an upsell: data, plan, email, Slack, reply, meeting, opportunity.

    `playbook` names the account's playbook (the receiver passes it when the alert decides it); without it the run
    chooses one on the alert, and again on the contract once it has it, and records its choice on itself.
    The run ends in a Completed state named for its outcome (Won, Declined, Rejected, ...), so the run list
    tells outcomes apart; callers still get the UpsellOutcome (Prefect returns a returned state's data).
    """
    journal = Journal(alert, opened_waits())
    try:
        outcome = run_upsell(start_run(journal, automation_level, reply_timeout_s, approval_timeout_s, playbook))
    except Exception:  # a failed step: the artifact still shows how far the run got (a wait is not an Exception)
        journal.publish()
        raise
    record_on_this_run([outcome_tag(outcome)], {})  # the run list filters on it (`outcome:won`)
    return final_state(outcome)


def run_upsell(run: UpsellRun) -> UpsellOutcome:
    """The body of the `upsell` flow: the steps of the design in order, and the decisions the level asks for."""
    alert, journal = run.alert, run.journal
    try:  # data that cannot be made safe stops the upsell here, before anything is written to anyone
        usage = journal.step("usage", UsageData, lambda: run.task(fetch_usage)(alert))
        contract = journal.step("contract", ContractData, lambda: run.task(fetch_contract)(alert.account_id))
        run.choose_playbook(contract)
        journal.reach(UpsellStage.FETCHING_DATA, **data_details(usage, contract), playbook=run.playbook.name,
                      variant=run.variant.name if run.variant else None)
        planned = journal.step("plan", PlanResult, lambda: run.task(ask_claude_for_plan)(usage, contract))
    except UnsafeData as exc:
        reason = f"stopped before any message: {exc}"
        opportunity_id = run.task(log_opportunity)(stopped_opportunity(run, reason))
        return stopped_for_review(run, reason, opportunity_id)
    plan = planned.plan
    journal.reach(UpsellStage.AI_ANALYSIS, **plan_details(planned))

    draft = journal.step("draft", EmailDraft, lambda: draft_email(alert, usage, contract, plan, **run.email_style))
    journal.drafted(draft)
    if approvals.asks(run.level, Checkpoint.BEFORE_EMAIL):
        approval = run.decide(inputs.email_approval(draft, plan, run.approval_timeout_s), plan)
        if not approval.approved:
            return run.finish(UpsellStatus.REJECTED, planned, note=approval.note)
        draft = inputs.approved_draft(draft, approval)
        journal.drafted(draft)  # as approved: the reviewer may have edited it
    hold_for_send_window(run, contract)
    email = journal.step("email", EmailResult, lambda: run.task(send_email_draft)(alert, draft))
    if email.status == "suppressed":
        suppressed = run.opportunity(UpsellStatus.SUPPRESSED, planned, email, CustomerReply.NO_REPLY)
        opportunity_id = run.task(log_opportunity)(suppressed)
        return run.finish(UpsellStatus.SUPPRESSED, planned, opportunity_id, email=email, reply=CustomerReply.NO_REPLY)
    journal.reach(UpsellStage.EMAIL_SENT, email=email.status, message_id=email.message_id, to=draft.to)

    checkpoint = approvals.slack_decides(run.level)
    links = decision_links(run, checkpoint.wait, {"estimated_value": plan.estimated_value}) if checkpoint else {}
    slack = journal.step("slack", SlackResult, lambda: post_summary(run, contract, planned, email, links))
    posted = "posted" if slack.posted else "not posted"
    journal.reach(UpsellStage.SLACK_POSTED, slack=posted, error=slack.error, withheld=slack.withheld or None)
    if slack.outcome_unknown:
        run.unknown.append("Slack summary")
    if slack.withheld:  # the summary failed the safety check: the level may ask a human before the final steps
        run.level = approvals.after_withheld_summary(run.level)
    if email.status in ("unknown", "blocked"):  # nothing more goes to the customer before a human looks
        note = hold_email(run, email)
        held = run.opportunity(UpsellStatus.NEEDS_REVIEW, planned, email, CustomerReply.NO_REPLY, note=note)
        opportunity_id = run.task(log_opportunity)(held)
        return run.finish(UpsellStatus.NEEDS_REVIEW, planned, opportunity_id, email=email, slack=slack, note=note)

    journal.reach(UpsellStage.WAITING_REPLY, event="upsell.reply.waiting")
    answer = wait_for_reply(run, contract, draft, plan, email)
    if answer.delivery in ("bounced", "complained"):  # the receiver suppressed the address already
        status = UpsellStatus(answer.delivery)
        ended = run.opportunity(status, planned, email, CustomerReply.NO_REPLY, note=f"the email {answer.delivery}")
        opportunity_id = run.task(log_opportunity)(ended)
        return run.finish(status, planned, opportunity_id, email=email, slack=slack, note=ended.reviewer_note)
    reply = read_reply(run, plan, answer)
    journal.reach(UpsellStage.WAITING_REPLY, reply=reply.value)

    value, note = plan.estimated_value, ""
    if approvals.asks(run.level, Checkpoint.AFTER_REPLY):
        review = run.decide(inputs.reply_review(plan, reply, bool(slack.withheld), run.approval_timeout_s), plan, reply)
        if not review.approved:
            return run.finish(UpsellStatus.REJECTED, planned, email=email, slack=slack, reply=reply, note=review.note)
        value, note = review.estimated_value, review.note

    meeting = None
    if reply is CustomerReply.YES:
        if approvals.asks(run.level, Checkpoint.BEFORE_MEETING):
            start = next_business_slot(datetime.now(UTC), run.settings.meeting_lead_time_h)
            booking = run.decide(inputs.meeting_approval(draft, contract, start, run.approval_timeout_s), plan, reply)
            if not booking.approved:
                return run.finish(
                    UpsellStatus.REJECTED, planned, email=email, slack=slack, reply=reply, note=booking.note
                )
        meeting = book_meeting(run, contract, plan)

    if approvals.asks(run.level, Checkpoint.BEFORE_LOG):
        asked = inputs.opportunity_approval(alert, plan, reply, run.approval_timeout_s, contract)
        review = run.decide(asked, plan, reply)
        if not review.approved:
            return run.finish(
                UpsellStatus.REJECTED, planned, email=email, slack=slack, reply=reply, meeting=meeting, note=review.note
            )
        value, note = review.estimated_value, review.note
    status, note = run.final_status(note)
    opportunity = run.opportunity(status, planned, email, reply, value=value, note=note, meeting=meeting)
    opportunity_id = run.task(log_opportunity)(opportunity)
    return run.finish(
        status, planned, opportunity_id, email=email, slack=slack, reply=reply, meeting=meeting, note=note
    )


@dataclass
class UpsellRun:
    """What the steps of one run share: its journal and settings, the level it runs at, and what a human must check."""

    journal: Journal
    settings: UpsellSettings
    level: AutomationLevel
    reply_timeout_s: float
    approval_timeout_s: float
    standins: list[str]
    playbooks: PlaybookFile = field(default_factory=PlaybookFile)
    #: The account's playbook: chosen on the alert at the start, on the contract once it is known.
    playbook: Playbook = DEFAULT_PLAYBOOK
    #: The playbook's A/B variant of the email for this account (None: the playbook runs no experiment).
    variant: Variant | None = None
    #: Which of the level, the reply timeout and the playbook were given as parameters (the playbook's do not
    #: replace a given level or timeout; a given playbook is not chosen again).
    given: frozenset[str] = frozenset()
    follow_up_sent: bool = False
    #: The customer's emailed reply, recorded on the opportunity.
    reply_text: str = ""
    #: Outward steps an earlier attempt died in: never repeated, flagged for a human.
    unknown: list[str] = field(default_factory=list)

    def follow(self, playbook: Playbook) -> None:
        """Follow `playbook` from here on: its level and reply timeout (unless given), its variant of the email."""
        self.playbook = playbook
        if playbook.reply_timeout_hours is not None and "reply_timeout" not in self.given:
            self.reply_timeout_s = playbook.reply_timeout_hours * 3600
        if playbook.automation_level is not None and "level" not in self.given:
            self.level = playbook.automation_level
        self.variant = choose_variant(playbook.variants, self.alert.account_id, experiment=playbook.name)
        if not self.journal.replaying:
            variant = f", variant {self.variant.name!r}" if self.variant else ""
            get_run_logger().info(
                "Playbook %r for account %s%s (%s)", playbook.name, self.alert.account_id, variant, self.level.value
            )

    def choose_playbook(self, contract: ContractData) -> None:
        """Choose the playbook again on the contract (unless it was given), and record it on the run: the tags
        `playbook:<name>` and `variant:<name>` and the `playbook` parameter (a resumed run keeps it)."""
        if "playbook" not in self.given:
            self.follow(self.playbooks.choose(self.alert, contract))
        if not self.journal.replaying:
            tags = [f"playbook:{self.playbook.name}", f"level:{self.level.value}"]
            tags += [f"variant:{self.variant.name}"] if self.variant else []
            record_on_this_run(tags, {"playbook": self.playbook.name})

    @property
    def email_style(self) -> dict[str, Any]:
        """The email's body template and subject: the variant's, else the playbook's template and the drafted one."""
        variant = self.variant
        return {
            "template": (variant.template if variant else None) or self.playbook.template,
            "subject": variant.subject if variant else None,
        }

    @property
    def alert(self) -> UsageAlert:
        return self.journal.alert

    def task(self, step: Task[P, T]) -> Task[P, T]:
        """`step` with this run's settings: its kind's timeout and the retry delays (`UPSELL_*_TIMEOUT_S`)."""
        return configured(step, self.settings)

    def wait(self, request: WaitRequest[R], due: datetime | None = None) -> R:
        """Record the wait (its deadline and the step results so far), then wait for its typed input."""
        journal = self.journal
        journal.waiting(request.kind, due or datetime.now(UTC) + timedelta(seconds=request.timeout_s))
        if request.kind not in journal.replay_waits:  # a wait opened in an earlier segment keeps its first record
            journal.publish()
            open_wait(request.kind, request.timeout_s, journal.results)
        answer = wait_for_input(request, self.settings.wait_grace_s, self.settings.pause_poll_s)
        journal.passed(request.kind)
        journal.answered(request.kind, answer_details(request, answer))
        return answer

    def decide(self, request: WaitRequest[R], plan: UpsellPlan, reply: CustomerReply | None = None) -> R:
        """Wait for a person's decision; the sales team is told in Slack, with approve/reject links, when the wait
        opens. A wait opened in an earlier segment was announced then: a resumed run does not announce it again
        (and the notice's idempotency record covers a run that died between the notice and the wait)."""
        due = datetime.now(UTC) + timedelta(seconds=request.timeout_s)
        if request.kind not in self.journal.replay_waits:
            links = decision_links(self, request.kind, request.initial)
            company = str(self.journal.results.get("contract", {}).get("company_name", ""))
            state = self.task(notify_reviewer)(
                self.alert, company, request.kind, plan, reply, due, links, return_state=True
            )
            if not state.is_completed():  # non-critical, as the summary: the form in the Prefect UI still waits
                get_run_logger().warning("The sales team could not be told that a decision waits: %s", state.message)
        return self.wait(request, due)

    def opportunity(
        self,
        status: UpsellStatus,
        planned: PlanResult,
        email: EmailResult | None,
        reply: CustomerReply,
        *,
        value: float | None = None,
        note: str = "",
        meeting: Meeting | None = None,
    ) -> Opportunity:
        """The record logged for the upsell (`value`: the estimated value, when a reviewer set it)."""
        alert = self.alert
        return Opportunity(
            opportunity_id=alert.opportunity_id,
            event_id=alert.event_id,
            account_id=alert.account_id,
            metric_type=alert.metric_type,
            automation_level=self.level,
            status=status,
            recommended_plan=planned.plan.recommended_plan,
            estimated_value=planned.plan.estimated_value if value is None else value,
            planner=planned.planner,
            reply=reply,
            email_message_id=email.message_id if email else None,
            meeting_join_url=meeting.join_url if meeting else None,
            reviewer_note=note,
            flow_run_id=str(flow_run.get_id()),
            occurred_at=alert.occurred_at,
            playbook=self.playbook.name,
            variant=self.variant.name if self.variant else "",
            follow_up_sent=self.follow_up_sent,
            reply_text=self.reply_text,
        )

    def final_status(self, note: str) -> tuple[UpsellStatus, str]:
        """How a run that reached the end ends: completed, or for a human to check whether a step an earlier
        attempt died in reached the customer (and the note says which)."""
        if not self.unknown:
            return UpsellStatus.COMPLETED, note
        unknown = f"outcome unknown (an attempt died during it): {', '.join(self.unknown)}"
        return UpsellStatus.NEEDS_REVIEW, "; ".join(filter(None, [note, unknown]))

    def finish(
        self,
        status: UpsellStatus,
        planned: PlanResult,
        opportunity_id: str | None = None,
        *,
        email: EmailResult | None = None,
        slack: SlackResult | None = None,
        reply: CustomerReply | None = None,
        meeting: Meeting | None = None,
        note: str = "",
    ) -> UpsellOutcome:
        """Reach `Completed` and return what the run reached (`opportunity_id`: the opportunity it logged, if any)."""
        if status is UpsellStatus.REJECTED and opportunity_id is None:
            # a rejected upsell is logged too, with the email and the answer it had: the funnel report counts every
            # upsell that ended, whatever its ending (an email sent and an answer given happened all the same)
            record = self.opportunity(status, planned, email, reply or CustomerReply.NO_REPLY, note=note,
                                      meeting=meeting)
            opportunity_id = self.task(log_opportunity)(record)
        outcome = UpsellOutcome(
            status=status,
            event_id=self.alert.event_id,
            account_id=self.alert.account_id,
            automation_level=self.level,
            email_sent=bool(email and email.delivered),
            email_status=email.status if email else "not_sent",
            reply=reply,
            meeting=meeting,
            opportunity_id=opportunity_id,
            planner=planned.planner,
            planner_reason=planned.reason,
            slack_posted=bool(slack and slack.posted),
            reviewer_note=note,
            unknown_outcomes=list(self.unknown),
            standins=self.standins,
            timings=collect_timings(),
        )
        self.journal.reach(UpsellStage.COMPLETED, outcome=outcome_state_name(outcome), opportunity_id=opportunity_id)
        self.journal.publish()
        return outcome


def start_run(
    journal: Journal,
    automation_level: AutomationLevel | None,
    reply_timeout_s: float | None,
    approval_timeout_s: float | None,
    playbook: str | None = None,
) -> UpsellRun:
    """The run's playbook, level and timeouts (the parameters, else the playbook's, else the settings); reaches
    `Started`."""
    settings = get_settings()
    playbooks = load_playbooks(settings.playbooks_file)  # an invalid file fails the run here, before any step
    pinned = given_playbook(playbooks, playbook)
    given = {"level": automation_level, "reply_timeout": reply_timeout_s, "playbook": pinned}
    run = UpsellRun(
        journal,
        settings,
        level=automation_level or automation_level_for(journal.alert.severity, settings.severity_levels),
        reply_timeout_s=reply_timeout_s or settings.reply_timeout_s,
        approval_timeout_s=approval_timeout_s or settings.approval_timeout_s,
        standins=announce_integrations(log=not journal.replaying),
        playbooks=playbooks,
        given=frozenset(name for name, value in given.items() if value is not None),
    )
    run.follow(pinned or playbooks.choose(journal.alert))
    journal.reach(UpsellStage.STARTED, automation_level=run.level.value, standins=", ".join(run.standins) or None)
    return run


def given_playbook(playbooks: PlaybookFile, name: str | None) -> Playbook | None:
    """The playbook named by the run's parameter; None (the run chooses) when the file no longer has it."""
    if name is None:
        return None
    try:
        return playbooks.named(name)
    except KeyError:
        get_run_logger().warning("Playbook %r is no longer in the playbooks file: choosing again", name)
        return None


def stopped_opportunity(run: UpsellRun, reason: str) -> Opportunity:
    """The record logged for an upsell stopped before any message: nothing planned or sent, a reason for a human."""
    alert = run.alert
    get_run_logger().warning("Upsell for event %s needs review: %s", alert.event_id, reason)
    return Opportunity(
        opportunity_id=alert.opportunity_id,
        event_id=alert.event_id,
        account_id=alert.account_id,
        metric_type=alert.metric_type,
        automation_level=run.level,
        status=UpsellStatus.NEEDS_REVIEW,
        recommended_plan="",
        estimated_value=0.0,
        planner="none",
        reply=CustomerReply.NO_REPLY,
        reviewer_note=reason,
        flow_run_id=str(flow_run.get_id()),
        occurred_at=alert.occurred_at,
        playbook=run.playbook.name,
        variant=run.variant.name if run.variant else "",
    )


def stopped_for_review(run: UpsellRun, reason: str, opportunity_id: str) -> UpsellOutcome:
    """Reach `Completed` for an upsell stopped before any message, and return its outcome `needs_review`."""
    run.journal.reach(UpsellStage.COMPLETED, outcome=STATUS_NAMES[UpsellStatus.NEEDS_REVIEW], reason=reason)
    run.journal.publish()
    return UpsellOutcome(
        status=UpsellStatus.NEEDS_REVIEW,
        event_id=run.alert.event_id,
        account_id=run.alert.account_id,
        automation_level=run.level,
        email_sent=False,
        email_status="not_sent",
        opportunity_id=opportunity_id,
        reviewer_note=reason,
        standins=run.standins,
        timings=collect_timings(),
    )


def data_details(usage: UsageData, contract: ContractData) -> dict[str, Any]:
    """What the `Fetching Data` stage shows."""
    return {
        "current_plan": contract.current_plan,
        "usage": usage.current_usage,
        "over_threshold": f"{usage.threshold_exceeded:.0%}",
        "trend": usage.usage_trend,
    }


def plan_details(planned: PlanResult) -> dict[str, Any]:
    """What the `AI Analysis` stage shows."""
    plan = planned.plan
    return {
        "recommended_plan": plan.recommended_plan,
        "estimated_value": plan.estimated_value,
        "planner": planned.planner,
    }


def decision_links(run: UpsellRun, wait: WaitKind, initial: dict[str, Any]) -> dict[str, str]:
    """Signed approve/reject links answering `wait` (its form's `initial` values, e.g. the estimated value, kept).

    Only the fields the wait's form takes go in (the email's text does not: an approval without it keeps the
    draft); a link whose answer the form would refuse is not offered, so every link offered can be used.
    """
    form = WAIT_INPUTS[wait]
    if "approved" not in form.model_fields:  # not a yes/no decision (a person reads a reply): the form only
        return {}
    links = {}
    for label, approved, note in (("approve", True, "approved from Slack"), ("reject", False, "rejected from Slack")):
        value: dict[str, Any] = {"approved": approved, "note": note}
        value |= {k: v for k, v in initial.items() if k == "estimated_value" and k in form.model_fields}
        try:
            form.model_validate(value)
        except ValidationError as exc:
            get_run_logger().warning("No %s link for %s: %s", label, wait, exc)
            continue
        links[label] = _decision_link(run.settings, wait, value, run.alert.event_id)
    return links


def _decision_link(settings: UpsellSettings, wait: str, value: dict[str, Any], event_id: str) -> str:
    token = LinkToken(
        flow_run_id=str(flow_run.get_id()),
        wait=wait,
        value=value,
        expires_at=int(time.time() + settings.link_ttl_s),
        nonce=event_id,
    )
    return link_for(settings.public_base_url, settings.link_secret.get_secret_value(), token)


def answer_details(request: WaitRequest[Any], answer: RunInput) -> dict[str, Any]:
    """What a wait's answer says, for the artifact: the decision, who took it (when they gave their name), the value
    and the note, and which of the form's texts the reviewer edited."""
    given = answer.model_dump(mode="json")
    details: dict[str, Any] = {}
    if "reply" in given:
        details["reply"] = given["reply"]
    if "approved" in given:
        expired = EXPIRED_WAIT_INPUT.get(request.kind, {}).get("note")
        timed_out = not given["approved"] and given.get("note") == expired
        details["decision"] = "not answered in time" if timed_out else ("approved" if given["approved"] else "rejected")
    if request.kind in ("send-window", "follow-up-window"):
        opened = given.get("note") == EXPIRED_WAIT_INPUT[request.kind]["note"]
        details["decision"] = "sent when the window opened" if opened else "sent now"
    if given.get("reviewer"):
        details["by"] = given["reviewer"]
    if given.get("approved") and "estimated_value" in given:
        details["estimated_value"] = given["estimated_value"]
    edited = [
        name.removesuffix("_text").replace("_", " ")
        for name, first in request.initial.items()
        if isinstance(first, str) and given.get(name) and given[name] != first
    ]
    if edited:
        details["edited"] = ", ".join(edited)
    if given.get("note") and not details.get("decision", "").startswith(("not answered", "sent when")):
        details["note"] = given["note"]
    return details


#: The name of a run's final (Completed) state for each outcome, so the Prefect run list tells them apart:
#: a completed upsell by the customer's reply, the others by how they ended.
REPLY_NAMES: dict[CustomerReply, str] = {
    CustomerReply.YES: "Won",
    CustomerReply.NO: "Declined",
    CustomerReply.MAYBE: "Maybe later",
    CustomerReply.NO_REPLY: "No reply",
}
STATUS_NAMES: dict[UpsellStatus, str] = {
    UpsellStatus.COMPLETED: "Completed",
    UpsellStatus.REJECTED: "Rejected",
    UpsellStatus.SUPPRESSED: "Suppressed",
    UpsellStatus.NEEDS_REVIEW: "Needs review",
    UpsellStatus.BOUNCED: "Bounced",
    UpsellStatus.COMPLAINED: "Marked as spam",
}
APPROVAL_TIMED_OUT = "Not approved in time"
#: Every name a final state of an upsell run can have (automations that watch for a run's end list them).
OUTCOME_STATE_NAMES = frozenset({*REPLY_NAMES.values(), *STATUS_NAMES.values(), APPROVAL_TIMED_OUT})


def outcome_state_name(outcome: UpsellOutcome) -> str:
    """The final state's name: Won / Declined / Maybe later / No reply for a completed upsell (the customer's
    reply), else Rejected, Not approved in time, Suppressed or Needs review."""
    if outcome.status is UpsellStatus.COMPLETED and outcome.reply is not None:
        return REPLY_NAMES[outcome.reply]
    if approval_timed_out(outcome):
        return APPROVAL_TIMED_OUT
    return STATUS_NAMES[outcome.status]


def approval_timed_out(outcome: UpsellOutcome) -> bool:
    """Whether the run ended because nobody answered an approval in time (the sweep closed it as a rejection)."""
    timed_out = {str(answer.get("note")) for answer in EXPIRED_WAIT_INPUT.values() if "approved" in answer}
    return outcome.status is UpsellStatus.REJECTED and outcome.reviewer_note in timed_out


def outcome_tag(outcome: UpsellOutcome) -> str:
    """The tag a finished upsell carries, its final state's name as a tag: `outcome:won`, `outcome:no-reply`,
    `outcome:not-approved-in-time`, ... (state names are shown, not filtered on; the run list filters tags)."""
    return f"outcome:{outcome_state_name(outcome).lower().replace(' ', '-')}"


#: Every tag a finished upsell can carry (the README lists them for saved filters).
OUTCOME_TAGS = frozenset(f"outcome:{name.lower().replace(' ', '-')}" for name in OUTCOME_STATE_NAMES)


def outcome_message(outcome: UpsellOutcome) -> str:
    """The final state's message: what happened, in a sentence for the sales team."""
    said = {
        CustomerReply.YES: "The customer said yes",
        CustomerReply.NO: "The customer said no",
        CustomerReply.MAYBE: "The customer said maybe later",
        CustomerReply.NO_REPLY: "No reply from the customer in time",
    }
    parts = {
        UpsellStatus.COMPLETED: [said[outcome.reply] if outcome.reply else "Completed"],
        UpsellStatus.REJECTED: ["Rejected by a reviewer"],
        UpsellStatus.SUPPRESSED: ["Not sent: the contact unsubscribed"],
        UpsellStatus.NEEDS_REVIEW: ["Needs a person to check it"],
        UpsellStatus.BOUNCED: ["The email bounced: the address gets no more email"],
        UpsellStatus.COMPLAINED: ["The customer marked the email as spam: the address gets no more email"],
    }[outcome.status]
    if approval_timed_out(outcome):
        parts = ["Nobody approved it in time"]
    if outcome.meeting is not None:
        parts.append("meeting booked")
    if outcome.opportunity_id and outcome.status is not UpsellStatus.REJECTED:  # a rejection's record: the report's
        parts.append(f"opportunity {outcome.opportunity_id} logged")
    if outcome.reviewer_note and not approval_timed_out(outcome):
        parts.append(f"note: {outcome.reviewer_note}")
    return "; ".join(parts) + "."


def final_state(outcome: UpsellOutcome) -> State[UpsellOutcome]:
    """The run's final state: type Completed, named for the outcome, with the outcome as its result."""
    return Completed(name=outcome_state_name(outcome), message=outcome_message(outcome), data=outcome)


def post_summary(
    run: UpsellRun, contract: ContractData, planned: PlanResult, email: EmailResult, links: dict[str, str]
) -> SlackResult:
    """Post the Slack summary (the `post_slack_summary` task)."""
    state = run.task(post_slack_summary)(run.alert, run.level, contract, planned, email, links, return_state=True)
    if state.is_completed():
        return state.result()
    # Slack is non-critical: the failure is recorded on the run and the upsell goes on
    return SlackResult(posted=False, error=str(state.message or state.name))


def hold_email(run: UpsellRun, email: EmailResult) -> str:
    """Why an email whose outcome is unknown, or that the safety check withheld, needs a human (an unknown one is
    flagged)."""
    if email.status == "unknown":
        run.unknown.insert(0, "email")
        return f"email outcome unknown: {email.detail}"
    return f"email withheld by the safety check: {email.detail}"


class SendSchedule(BaseModel):
    """When the email may go out under the playbook's send window (recorded, so a resumed run keeps it)."""

    send_at: datetime
    held: bool
    zone: str
    held_s: float = 0.0


def hold_for_send_window(run: UpsellRun, contract: ContractData, wait: WaitKind = "send-window") -> float:
    """Outside the contact's send window, wait (suspended: no process held) until it opens, then send; the
    seconds held. `follow-up-window` for the follow-up, which keeps to the same window.

    The sweep resumes the wait when it expires, at the window's opening; a person may send at once from the form.
    """
    window = run.playbook.send_window
    if window is None:
        return 0.0

    def schedule() -> SendSchedule:
        now = datetime.now(UTC)
        send_at = next_send_time(window, now, contract.contact_timezone, contract.contact_country)
        held_s = (send_at - now).total_seconds()
        return SendSchedule(send_at=send_at, held=held_s > 0, zone=contract.contact_timezone, held_s=held_s)

    planned = run.journal.step(f"{wait}-at", SendSchedule, schedule)
    if not planned.held:
        return 0.0
    when = describe_wait(planned.send_at, planned.zone)
    if not run.journal.replaying:
        get_run_logger().info("Outside the contact's send window: the email %s", when)
    wait_s = max((planned.send_at - datetime.now(UTC)).total_seconds(), 1.0)
    run.wait(inputs.send_window(contract, when, wait_s, wait), due=planned.send_at)
    return planned.held_s


def wait_for_reply(
    run: UpsellRun, contract: ContractData, draft: EmailDraft, plan: UpsellPlan, email: EmailResult
) -> CustomerReplyInput:
    """The customer's reply. With a follow-up in the playbook: when nobody answered after its delay, one follow-up
    email in the same thread (sent once; never after a reply, and not to an unsubscribed contact), then the wait
    goes on until the reply timeout."""
    follow_up, total_s = run.playbook.follow_up, run.reply_timeout_s
    if follow_up is None or follow_up.after_hours * 3600 >= total_s:
        return run.wait(inputs.customer_reply(draft, plan, total_s))
    first_s = follow_up.after_hours * 3600
    answer = run.wait(inputs.customer_reply(draft, plan, first_s))
    if answer.reply is not CustomerReply.NO_REPLY or answer.delivery != "answered":
        return answer
    held_s = hold_for_send_window(run, contract, "follow-up-window")
    again = draft_follow_up(run.alert, contract, draft)
    sent = run.journal.step(
        "follow_up", EmailResult, lambda: run.task(send_follow_up)(run.alert, again, email.message_id)
    )
    run.follow_up_sent = sent.delivered
    if sent.status == "unknown":
        run.unknown.append("follow-up email")
    run.journal.reach(UpsellStage.WAITING_REPLY, follow_up=sent.status)
    # the reply timeout counts from the first email: a follow-up held for the window shortens the wait after it
    return run.wait(inputs.customer_reply(draft, plan, max(total_s - first_s - held_s, 1.0), kind="follow-up-reply"))


def read_reply(run: UpsellRun, plan: UpsellPlan, answer: CustomerReplyInput) -> CustomerReply:
    """The customer's reply; an emailed reply the classifier could not call, or that we cannot tell the customer
    wrote, is read by a person (a typed form showing the words, and the sender and reason when unverified), never
    guessed or applied. The words are recorded on the opportunity."""
    run.reply_text = answer.text
    if answer.delivery not in ("unclear", "unverified"):
        return answer.reply
    reading = inputs.reply_reading(answer.text, plan, run.approval_timeout_s, sender=answer.sender, why=answer.why)
    return run.decide(reading, plan).reply


def book_meeting(run: UpsellRun, contract: ContractData, plan: UpsellPlan) -> Meeting | None:
    """Book the follow-up meeting (the `create_zoom_meeting` task); None when an earlier attempt died booking it."""
    meeting = run.task(create_zoom_meeting)(run.alert, contract, plan)
    if meeting is None:  # whether that attempt reached Zoom is unknown: flagged for a human, never booked twice
        run.unknown.append("Zoom meeting")
    else:
        run.journal.reach(
            UpsellStage.MEETING_SCHEDULED, join_url=meeting.join_url, start_time=meeting.start_time.isoformat()
        )
    return meeting
