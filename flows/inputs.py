"""The waits of the upsell flow: what each asks for (a typed `RunInput` form with its description and initial
values, shown in the Prefect UI) and how a run waits for the answer."""

from __future__ import annotations

from copy import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, cast
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput, keyset_from_paused_state, read_flow_run_input
from prefect.states import Suspended
from pydantic import create_model

from flows.approvals import Checkpoint
from flows.models import (
    ContractData,
    CustomerReply,
    CustomerReplyInput,
    EmailApproval,
    EmailDraft,
    MeetingApproval,
    OpportunityReview,
    ReplyReading,
    SendWindowRelease,
    UpsellPlan,
    UsageAlert,
    WaitKind,
)
from flows.send_windows import describe_wait
from tasks.content.email import with_message
from tasks.runtime.waits import WaitDeadline, deadline_key

R = TypeVar("R", bound=RunInput)
#: The name of the state Prefect moves a suspended run to when its wait is answered (`resume_flow_run`).
RESUMED = "Resuming"


@dataclass(frozen=True)
class WaitRequest(Generic[R]):
    """One wait: its key, the form that answers it, how long it stays open and what the form shows."""

    kind: WaitKind
    input_type: type[R]
    timeout_s: float
    description: str
    initial: dict[str, Any] = field(default_factory=dict)


def answer_form(request: WaitRequest[R]) -> type[R]:
    """The form the Prefect UI shows for the wait: its input type with the initial values filled in.

    Prefect's `with_initial_data` declares each prefilled field again with its bare type: the saved schema then
    loses the field's constraints (`minimum: 0`), title and help text, and lists no field as required, so the UI
    shows every field "(Optional)" and the Prefect API accepts an estimated value of -5. Here each field keeps
    its declaration with only its default changed, and what the input type requires stays required.
    """
    described = request.input_type.with_initial_data(description=request.description)  # the text above the form
    declared = request.input_type.model_fields
    prefilled: dict[str, Any] = {}
    for name, value in request.initial.items():
        field_info = copy(declared[name])
        field_info.default, field_info.default_factory = value, None
        prefilled[name] = (declared[name].annotation, field_info)
    # a prefilled value (the estimated value) may be emptied in the UI: it then keeps what was prefilled, instead of
    # Prefect's "'estimated_value' is a required property"; a decision (a tick box) stays required
    required = [
        name
        for name, info in declared.items()
        if info.is_required() and (name not in request.initial or isinstance(request.initial[name], bool))
    ]

    def keep_required(schema: dict[str, Any]) -> None:
        schema["required"] = [name for name in schema.get("properties", {}) if name in required]

    model = create_model(request.input_type.__name__, __base__=described, __doc__=described.__doc__, **prefilled)
    model.model_config["json_schema_extra"] = keep_required
    model.model_rebuild(force=True)
    return cast("type[R]", model)


def wait_for_input(request: WaitRequest[R], grace_s: float, poll_s: int) -> R:
    """Wait for the request's typed input. A deployment run suspends (no process held); a direct call pauses in place.

    Prefect's own timeout is the deadline plus a grace period: the `reply-timeouts` sweep closes expired
    waits first, so that an unanswered wait ends the run Completed rather than Failed.

    Only a stored answer ends a wait. A run rescheduled while it waited (its process died, the recovery sweep ran
    it again) finds the wait's key used but no answer: it suspends again at the same wait, under the same key
    (so every answering side, reading the key from the run's state, answers it as before), until the deadline
    recorded when the wait opened.
    """
    form = answer_form(request)
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or context.flow_run.deployment_id is None:
        timeout = int(request.timeout_s + grace_s)
        return pause_flow_run(wait_for_input=form, timeout=timeout, poll_interval=poll_s, key=request.kind)
    run_id = context.flow_run.id
    answer = already_answered(run_id, request.kind)
    if answer is not None:
        # A resumed run replays the flow up to here: Prefect would log "Suspending flow run" again before it
        # finds the wait answered; the answer is read directly instead (what Prefect returns in that case).
        return form.model_validate(answer)
    reopen_wait(run_id, request.kind)
    return suspend_flow_run(wait_for_input=form, timeout=remaining_s(run_id, request, grace_s), key=request.kind)


def already_answered(flow_run_id: UUID, kind: str) -> dict[str, Any] | None:
    """The answer to this wait of the run, or None when nobody answered it.

    A used pause key is not an answer: Prefect keeps the key of every wait that suspended until the run starts
    over, also when the run was rescheduled while it waited (crashed, recovered). The answer is the stored
    response; Prefect stores none for an empty one (what the `reply-timeouts` sweep sends for `no_reply`), so a
    wait that Prefect resumed (its Suspended state followed by `Resuming`) without a stored response was answered
    empty."""
    keyset = keyset_from_paused_state(Suspended(pause_key=kind))
    stored = read_flow_run_input(keyset["response"], flow_run_id=flow_run_id)
    if stored is not None:
        return cast("dict[str, Any]", stored)
    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(flow_run_id)
    waits = [i for i, state in enumerate(states) if state.is_paused() and state.state_details.pause_key == kind]
    after = states[waits[-1] + 1 : waits[-1] + 2] if waits else []
    return {} if after and after[0].is_scheduled() and after[0].name == RESUMED else None


def reopen_wait(flow_run_id: UUID, kind: str) -> None:
    """Let the run suspend again under the key of a wait it suspended at before without being answered.

    Prefect refuses a second suspension under a key the run used (`pause_keys` of its policy) and would return
    an answer that does not exist: the key is taken out of the run's policy, the rest of it kept."""
    with get_client(sync_client=True) as client:
        policy = client.read_flow_run(flow_run_id).empirical_policy
        if kind not in (policy.pause_keys or set()):
            return
        kept = policy.model_copy(update={"pause_keys": set(policy.pause_keys or set()) - {kind}})
        client.update_flow_run(flow_run_id, empirical_policy=kept)


def remaining_s(flow_run_id: UUID, request: WaitRequest[Any], grace_s: float) -> int:
    """Prefect's timeout for the wait: the time left until the deadline recorded when the wait opened (a run
    that suspends again keeps it; none recorded: the whole timeout), plus the grace period."""
    stored = read_flow_run_input(deadline_key(request.kind), flow_run_id=flow_run_id)
    left = request.timeout_s
    if stored is not None:
        left = (WaitDeadline.model_validate(stored).deadline - datetime.now(UTC)).total_seconds()
    return max(int(max(left, 0.0) + grace_s), 1)


def email_approval(draft: EmailDraft, plan: UpsellPlan, timeout_s: float) -> WaitRequest[EmailApproval]:
    """A reviewer approves, and may edit, the email before it is sent; nothing is sent until they tick "send".

    The Prefect UI shows a text field one line high (the message's first line only): the whole draft is shown
    above the form, quoted as inert text (the planner wrote it)."""
    message = draft.message or draft.body_text
    return WaitRequest(
        Checkpoint.BEFORE_EMAIL.wait,
        EmailApproval,
        timeout_s,
        # the draft first: the UI gives this text the room its form leaves, and scrolls the rest
        f"**The email to {draft.to}**, as drafted:\n\n{quoted(f'Subject: {draft.subject}')}\n>\n{quoted(message)}"
        f"\n\nIt recommends **{plan.recommended_plan}** (estimated ${plan.estimated_value:,.0f} a year). The answer"
        " buttons, the signature and the unsubscribe link are added when it is sent. Tick **Send this email** to"
        " send it (you may edit the subject and the message below first), or leave it unticked to stop the upsell.",
        {"approved": False, "subject": draft.subject, "body_text": message},
    )


def quoted(text: str) -> str:
    """Text as a markdown quote of inert lines (every markdown and HTML character escaped), each line kept."""
    return "\n".join(f"> {line}" if line.strip() else ">" for line in _plain(text).splitlines()) or "> (empty)"


def approved_draft(draft: EmailDraft, approval: EmailApproval) -> EmailDraft:
    """The draft as the reviewer approved it: their subject and message where they changed them.

    A new subject alone keeps both body parts as drafted; a changed message is put back between the answer
    links, the signature and the unsubscribe footer (`with_message`), which the reviewer never edits.
    """
    drafted_message = draft.message or draft.body_text
    subject = approval.subject.strip() or draft.subject
    message = approval.body_text if approval.body_text.strip() else drafted_message
    edited = draft if message.strip() == drafted_message.strip() else with_message(draft, message)
    return edited if subject == draft.subject else edited.model_copy(update={"subject": subject})


def customer_reply(
    draft: EmailDraft, plan: UpsellPlan, timeout_s: float, kind: WaitKind = "reply"
) -> WaitRequest[CustomerReplyInput]:
    """The customer's answer to the email (from the reply links, the receiver or the CLI); `follow-up-reply` after
    the follow-up email."""
    after = " (a follow-up email was sent)" if kind == "follow-up-reply" else ""
    return WaitRequest(
        kind,
        CustomerReplyInput,
        timeout_s,
        f"The customer's answer to the upsell email recommending **{plan.recommended_plan}** sent to"
        f" **{draft.to}**{after}, if they answered another way than the email's buttons (by phone, by email)."
        " Leave this wait alone if they have not answered: it closes by itself as \"no reply\" when it expires.",
    )


def reply_reading(
    text: str, plan: UpsellPlan, timeout_s: float, *, sender: str = "", why: str = ""
) -> WaitRequest[ReplyReading]:
    """A person reads an emailed reply the classifier could not call, or one we cannot tell the customer wrote
    (`why`, from `sender`). The email's words and sender are data: quoted as inert markdown, never markup."""
    if why:
        lead = (
            f"An email answered the upsell email recommending **{plan.recommended_plan}**, but it was **not applied**"
            f" as the customer's answer: {_plain(why)}. It was sent by `{_code(sender or 'an unknown sender')}`."
            " Decide only if you know the customer's answer (for example, you asked them)."
        )
    else:
        lead = (
            f"The customer answered the email recommending **{plan.recommended_plan}**, but whether it means yes,"
            " no or maybe could not be told."
        )
    return WaitRequest(
        "read-reply",
        ReplyReading,
        timeout_s,
        f"{lead} The words of the email (quotes and signature removed):\n\n{quoted(text)}\n\nChoose what it means.",
    )


def _code(text: str) -> str:
    """Text for an inline code span: no backtick or line break can end it."""
    return " ".join(text.replace("`", "'").split())[:320]


def _plain(text: str, limit: int = 2000) -> str:
    """The customer's text as inert markdown: every markdown and HTML character escaped."""
    return "".join(f"\\{c}" if c in "\\`*_{}[]()<>#+-.!|~&" else c for c in text[:limit])


def send_window(
    contract: ContractData, when: str, timeout_s: float, kind: WaitKind = "send-window"
) -> WaitRequest[SendWindowRelease]:
    """The email (`follow-up-window`: the follow-up) waits for the contact's business hours (the playbook's send
    window); it goes out when the window opens (the sweep answers the wait then), or at once when a person submits
    the form."""
    which = "follow-up email" if kind == "follow-up-window" else "upsell email"
    return WaitRequest(
        kind,
        SendWindowRelease,
        timeout_s,
        f"The {which} to **{contract.contact_email}** is held for the contact's business hours: it {when}."
        " Submit this form only to send it now instead.",
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
        + f"The customer answered **{_said(reply)}**. Approve the upsell to {plan.recommended_plan}"
        f" ({'a meeting will be booked and ' if reply is CustomerReply.YES else ''}the opportunity logged).",
        {"approved": True, "estimated_value": plan.estimated_value},
    )


def meeting_approval(
    draft: EmailDraft, contract: ContractData, start: datetime, timeout_s: float
) -> WaitRequest[MeetingApproval]:
    """A reviewer approves booking the meeting the customer said yes to, at the time it would be booked for
    (`start`: the first slot after the meeting lead time), shown in the contact's time zone when known."""
    return WaitRequest(
        Checkpoint.BEFORE_MEETING.wait,
        MeetingApproval,
        timeout_s,
        f"The customer said yes. A follow-up meeting with **{draft.to}** ({company_of(contract)}) is proposed for"
        f" **{meeting_time(start, contract.contact_timezone)}**. Submit the form as it is to book it; untick"
        " **Book the meeting** to leave it unbooked.",
        {"approved": True},
    )


def meeting_time(start: datetime, timezone: str) -> str:
    """When the meeting starts, in the contact's time zone and in UTC ("Tue 8 Dec 2026 16:00 Europe/Berlin
    (15:00 UTC)"); in UTC alone when the zone is UTC or unknown."""
    return describe_wait(start, timezone).removeprefix("sends ")


def company_of(contract: ContractData | None, account_id: str = "") -> str:
    """The customer as the forms name it: the company, else the account."""
    if contract is not None and contract.company_name:
        return contract.company_name
    return f"account {account_id}" if account_id else "the customer"


def opportunity_approval(
    alert: UsageAlert, plan: UpsellPlan, reply: CustomerReply, timeout_s: float, contract: ContractData | None = None
) -> WaitRequest[OpportunityReview]:
    """A reviewer approves the opportunity, and may change its value, before it is logged."""
    return WaitRequest(
        Checkpoint.BEFORE_LOG.wait,
        OpportunityReview,
        timeout_s,
        f"Log the opportunity for **{company_of(contract, alert.account_id)}**: {plan.recommended_plan}, the"
        f" customer answered **{_said(reply)}**. Submit the form as it is to log it; untick **Approve the upsell**"
        " to reject it.",
        {"approved": True, "estimated_value": plan.estimated_value},
    )


def _said(reply: CustomerReply) -> str:
    """The reply as a reviewer reads it ("maybe", "no reply")."""
    return reply.value.replace("_", " ")
