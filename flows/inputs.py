"""The waits of the upsell flow: what each asks for (a typed `RunInput` form with its description and initial
values, shown in the Prefect UI) and how a run waits for the answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from prefect.context import FlowRunContext
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput

from flows.approvals import Checkpoint
from flows.models import (
    CustomerReply,
    CustomerReplyInput,
    EmailApproval,
    EmailDraft,
    MeetingApproval,
    OpportunityReview,
    UpsellPlan,
    UsageAlert,
    WaitKind,
)
from tasks.content.email import text_to_html

R = TypeVar("R", bound=RunInput)


@dataclass(frozen=True)
class WaitRequest(Generic[R]):
    """One wait: its key, the form that answers it, how long it stays open and what the form shows."""

    kind: WaitKind
    input_type: type[R]
    timeout_s: float
    description: str
    initial: dict[str, Any] = field(default_factory=dict)


def wait_for_input(request: WaitRequest[R], grace_s: float, poll_s: int) -> R:
    """Wait for the request's typed input. A deployment run suspends (no process held); a direct call pauses in place.

    Prefect's own timeout is the deadline plus a grace period: the `reply-timeouts` sweep closes expired
    waits first, so that an unanswered wait ends the run Completed rather than Failed.
    """
    form = request.input_type.with_initial_data(description=request.description, **request.initial)
    safety_timeout = int(request.timeout_s + grace_s)
    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None and context.flow_run.deployment_id is not None:
        return suspend_flow_run(wait_for_input=form, timeout=safety_timeout, key=request.kind)
    return pause_flow_run(wait_for_input=form, timeout=safety_timeout, poll_interval=poll_s, key=request.kind)


def email_approval(draft: EmailDraft, plan: UpsellPlan, timeout_s: float) -> WaitRequest[EmailApproval]:
    """A reviewer approves, and may edit, the email before it is sent."""
    return WaitRequest(
        Checkpoint.BEFORE_EMAIL.wait,
        EmailApproval,
        timeout_s,
        f"Approve the upsell email to {draft.to} recommending **{plan.recommended_plan}**"
        f" (est. ${plan.estimated_value:,.0f}/yr). Edit the subject or body before approving.",
        {"approved": True, "subject": draft.subject, "body_text": draft.body_text},
    )


def approved_draft(draft: EmailDraft, approval: EmailApproval) -> EmailDraft:
    """The draft as the reviewer approved it: their subject and body where they changed them."""
    if (approval.subject, approval.body_text) == (draft.subject, draft.body_text):
        return draft
    return draft.model_copy(
        update={
            "subject": approval.subject or draft.subject,
            "body_text": approval.body_text or draft.body_text,
            "body_html": text_to_html(approval.body_text) if approval.body_text else draft.body_html,
        }
    )


def customer_reply(draft: EmailDraft, plan: UpsellPlan, timeout_s: float) -> WaitRequest[CustomerReplyInput]:
    """The customer's answer to the email (from the reply links, the receiver or the CLI)."""
    return WaitRequest(
        "reply",
        CustomerReplyInput,
        timeout_s,
        f"The customer's answer to the upsell email ({plan.recommended_plan}) sent to {draft.to}.",
    )


def reply_review(
    plan: UpsellPlan, reply: CustomerReply, summary_withheld: bool, timeout_s: float
) -> WaitRequest[OpportunityReview]:
    """Sales approves the upsell, and may change its value, once the customer replied."""
    return WaitRequest(
        Checkpoint.AFTER_REPLY.wait,
        OpportunityReview,
        timeout_s,
        ("The Slack summary was withheld by the safety check. " if summary_withheld else "")
        + f"Customer replied **{reply.value}**. Approve the upsell to {plan.recommended_plan}"
        f" ({'a meeting will be booked and ' if reply is CustomerReply.YES else ''}the opportunity logged).",
        {"approved": True, "estimated_value": plan.estimated_value},
    )


def meeting_approval(draft: EmailDraft, timeout_s: float) -> WaitRequest[MeetingApproval]:
    """A reviewer approves booking the meeting the customer said yes to."""
    return WaitRequest(
        Checkpoint.BEFORE_MEETING.wait,
        MeetingApproval,
        timeout_s,
        f"The customer said yes. Book a meeting with {draft.to}?",
        {"approved": True},
    )


def opportunity_approval(
    alert: UsageAlert, plan: UpsellPlan, reply: CustomerReply, timeout_s: float
) -> WaitRequest[OpportunityReview]:
    """A reviewer approves the opportunity, and may change its value, before it is logged."""
    return WaitRequest(
        Checkpoint.BEFORE_LOG.wait,
        OpportunityReview,
        timeout_s,
        f"Log the opportunity for {alert.account_id} ({plan.recommended_plan}, reply {reply.value})?",
        {"approved": True, "estimated_value": plan.estimated_value},
    )
