"""Domain models shared by the flows, the tasks and the webhook.

Everything that crosses a boundary (flow parameters, task results, pause inputs, webhook payloads) is one
of these pydantic models, so that Prefect can validate parameters, render input forms in the UI and
persist results for resumed runs."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Annotated, Any, Literal

from prefect.input import RunInput
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)


class CatalogPlan(BaseModel):
    """One plan tier."""

    name: str
    annual_price: float
    features: list[str]


class Catalogue(BaseModel):
    """Plan tiers, cheapest first."""

    currency: str
    plans: list[CatalogPlan]

    @staticmethod
    def _key(name: str) -> str:
        """How plan names compare: NFKC, control and format characters (zero-width, bidi) dropped, whitespace
        collapsed, case folded; so a model's "Ｐｒｏｆｅｓｓｉｏｎａｌ\u200b " still names Professional."""
        text = unicodedata.normalize("NFKC", name)
        kept = "".join(c for c in text if c.isspace() or unicodedata.category(c)[0] != "C")
        return " ".join(kept.split()).casefold()

    def find(self, name: str) -> CatalogPlan | None:
        """The plan called `name` (compared as `_key` does), or None."""
        wanted = self._key(name)
        return next((p for p in self.plans if self._key(p.name) == wanted), None)

    def next_tier(self, name: str) -> CatalogPlan:
        """The tier above `name` (the top tier stays the top tier; an unknown plan gets the cheapest)."""
        listed = self.find(name)
        if listed is None:
            return self.plans[0]
        index = self.plans.index(listed)
        return self.plans[min(index + 1, len(self.plans) - 1)]

    def value_cap(self, recommended_plan: str, current_spend: float, ratio: float) -> float:
        """The most an upsell to `recommended_plan` may be worth: `ratio` x the spend, and never more than `ratio`
        x the plan's list price (an account on a free plan is bounded by the list price alone)."""
        listed = self.find(recommended_plan)
        price = listed.annual_price if listed is not None else max(p.annual_price for p in self.plans)
        base = min(current_spend, price) if current_spend > 0 else price
        return ratio * base

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.plans]


@cache
def load_catalogue() -> Catalogue:
    """The bundled catalogue (flows/catalogue.json)."""
    text = resources.files("flows").joinpath("catalogue.json").read_text()
    return Catalogue.model_validate(json.loads(text))


EVENT_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,200}$"
_SLUG_RE = re.compile(r"[^a-z0-9]+")


class Severity(StrEnum):
    """How urgent the usage alert is, as reported by the metrics system."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class AutomationLevel(StrEnum):
    """How much of the upsell runs without a human."""

    FULL_AUTOMATION = "FULL_AUTOMATION"
    HUMAN_INTERVENTION = "HUMAN_INTERVENTION"
    HYBRID = "HYBRID"


DEFAULT_SEVERITY_LEVELS: dict[Severity, AutomationLevel] = {
    Severity.CRITICAL: AutomationLevel.FULL_AUTOMATION,
    Severity.HIGH: AutomationLevel.HYBRID,
    Severity.MEDIUM: AutomationLevel.HUMAN_INTERVENTION,
    Severity.LOW: AutomationLevel.HUMAN_INTERVENTION,
}


def automation_level_for(severity: Severity, mapping: dict[Severity, AutomationLevel] | None = None) -> AutomationLevel:
    """The automation level an alert of this severity gets (critical -> full, high -> hybrid, else human)."""
    return (mapping or DEFAULT_SEVERITY_LEVELS)[Severity(severity)]


_METRIC_WORD_BREAK = re.compile(r"[_\-.\s]+|(?<=[a-z0-9])(?=[A-Z])")


def metric_label(metric_type: str) -> str:
    """The metric as a customer reads it ("trade_volume" -> "trade volume", "apiCalls" -> "api calls"): the raw
    metric names are the metrics system's identifiers, never shown to a customer. Acronyms keep their case."""
    words = [w for w in _METRIC_WORD_BREAK.split(metric_type.strip()) if w]
    return " ".join(w if w.isupper() and len(w) > 1 else w.lower() for w in words)


class CustomerReply(StrEnum):
    """What the customer answered to the upsell email."""

    YES = "yes"
    NO = "no"
    MAYBE = "maybe"
    NO_REPLY = "no_reply"


class UpsellStage(StrEnum):
    """The workflow states of the reference design, shown per run in the Prefect UI."""

    STARTED = "Started"
    FETCHING_DATA = "Fetching Data"
    AI_ANALYSIS = "AI Analysis"
    EMAIL_SENT = "Email Sent"
    SLACK_POSTED = "Slack Posted"
    WAITING_REPLY = "Waiting Reply"
    MEETING_SCHEDULED = "Meeting Scheduled"
    COMPLETED = "Completed"


STAGE_ORDER: list[UpsellStage] = list(UpsellStage)


class UpsellStatus(StrEnum):
    """How an upsell ended."""

    COMPLETED = "completed"
    REJECTED = "rejected"
    SUPPRESSED = "suppressed"
    NEEDS_REVIEW = "needs_review"
    BOUNCED = "bounced"  # the email hard-bounced: the address is suppressed
    COMPLAINED = "complained"  # the customer marked the email as spam: the address is suppressed


def _finite(value: float | None, name: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number")
    return value


class UsageAlert(BaseModel):
    """A usage alert from the metrics system: the input of one upsell."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(pattern=EVENT_ID_PATTERN, description="Unique id of the alert; one upsell per id.")
    account_id: str = Field(min_length=1, max_length=100)
    metric_type: str = Field(min_length=1, max_length=100, examples=["trade_volume"])
    current_value: float | None = Field(
        default=None, description="Value that crossed the threshold; None when the caller did not report it."
    )
    threshold: float | None = Field(default=None, ge=0)
    severity: Severity = Severity.HIGH
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    context: dict[str, Any] = Field(default_factory=dict)

    @field_validator("current_value", "threshold")
    @classmethod
    def _must_be_finite(cls, value: float | None, info: Any) -> float | None:
        return _finite(value, info.field_name)

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @property
    def opportunity_id(self) -> str:
        """`opp_{account_id}_{event_id}`, the id the opportunity is logged under."""
        return f"opp_{self.account_id}_{self.event_id}"

    @property
    def run_name(self) -> str:
        """`upsell-{account_id}-{event_id}-{YYYYMMDD-HHMMSS}`, stable across resumes."""
        return f"upsell-{self.account_id}-{self.event_id}-{self.occurred_at.strftime('%Y%m%d-%H%M%S')}"

    @property
    def slug(self) -> str:
        """A lowercase key usable in Prefect artifact keys."""
        return _SLUG_RE.sub("-", f"{self.account_id}-{self.event_id}".lower()).strip("-")[:120]


#: Growth within this ratio either way is "stable" (about the same as the previous period).
STABLE_GROWTH = 0.02


class UsageData(BaseModel):
    """Current usage of one metric for an account (the reference design's UsageData)."""

    account_id: str
    current_usage: float
    usage_trend: Literal["increasing", "decreasing", "stable"]
    usage_period: Literal["daily", "weekly", "monthly"]
    threshold_exceeded: float = Field(description="How far usage is over the threshold, as a ratio (0.5 = 50 %).")
    metric_type: str
    growth_rate: float = Field(default=0.0, description="Period-over-period growth, as a ratio.")
    additional_context: dict[str, Any] = Field(default_factory=dict)

    @property
    def previous_usage(self) -> float | None:
        """The previous period's figure (`additional_context.previous_usage`); None when the source gave none, or
        0 (growth from nothing is no percentage)."""
        previous = self.additional_context.get("previous_usage")
        if not isinstance(previous, int | float) or isinstance(previous, bool) or not math.isfinite(previous):
            return None
        return float(previous) if previous > 0 else None

    def change_in_words(self) -> str | None:
        """The change on the previous period as a customer reads it: "up 35 % on last month", "down 12 % on
        yesterday", "about the same as last week"; None without a previous figure (then nothing is said)."""
        if self.previous_usage is None:
            return None
        last = {"daily": "yesterday", "weekly": "last week", "monthly": "last month"}[self.usage_period]
        percent = round(abs(self.growth_rate) * 100)
        if abs(self.growth_rate) <= STABLE_GROWTH or percent == 0:
            return f"about the same as {last}"
        return f"{'up' if self.growth_rate > 0 else 'down'} {percent:,} % on {last}"


class ContractData(BaseModel):
    """The account's contract from the CRM (the reference design's ContractData)."""

    account_id: str
    company_name: str = ""
    current_plan: str
    contract_end_date: str
    renewal_date: str
    current_spend: float = Field(ge=0, description="Annual spend on the current plan.")
    contract_terms: dict[str, Any] = Field(default_factory=dict)
    contact_info: dict[str, str] = Field(default_factory=dict, description="name, email, title of the contact.")

    @property
    def contact_email(self) -> str:
        return self.contact_info.get("email", "")

    @property
    def contact_timezone(self) -> str:
        """The contact's IANA time zone (`contact_info.timezone`), UTC when the CRM has none."""
        return self.contact_info.get("timezone", "") or "UTC"

    @property
    def contact_country(self) -> str:
        """The contact's ISO 3166 country code (`contact_info.country`), '' when the CRM has none."""
        return self.contact_info.get("country", "").strip().upper()


class UpsellPlan(BaseModel):
    """An upsell recommendation (the reference design's UpsellPlan), validated."""

    recommended_plan: str = Field(min_length=1)
    estimated_value: float = Field(ge=0, description="Added annual value, in the contract's currency.")
    justification: str = Field(min_length=1)
    features: list[str]
    roi_analysis: str
    risk_assessment: str

    @field_validator("recommended_plan")
    @classmethod
    def _non_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("recommended_plan must not be blank")
        return value.strip()

    @field_validator("estimated_value")
    @classmethod
    def _finite_value(cls, value: float) -> float:
        return _finite(value, "estimated_value")  # type: ignore[return-value]


class PlanResult(BaseModel):
    """A plan together with which planner produced it and why."""

    plan: UpsellPlan
    planner: str = Field(description="'claude' or 'rule-based'.")
    reason: str = ""


class EmailDraft(BaseModel):
    """The upsell email before it is sent: editable by a reviewer in HUMAN_INTERVENTION.

    `message` is the part a reviewer may edit (no link in it); `body_text` and `body_html` are the whole email,
    that message with the answer links, the signature and the unsubscribe footer around it.
    """

    to: str
    subject: str
    body_text: str
    body_html: str
    reply_links: dict[str, str] = Field(default_factory=dict)
    unsubscribe_url: str = ""
    message: str = ""
    sender_name: str = ""
    sender_postal_address: str = ""
    reply_to: str = Field(default="", description="The run's signed reply address (empty: replies go to From).")


class EmailResult(BaseModel):
    """What became of the upsell email."""

    status: Literal["sent", "already_sent", "unknown", "not_sent", "suppressed", "blocked"]
    message_id: str | None = None
    provider: str = ""
    detail: str = ""

    @property
    def delivered(self) -> bool:
        return self.status in ("sent", "already_sent")


class SlackResult(BaseModel):
    """What became of the Slack summary (non-critical)."""

    posted: bool
    channel: str = ""
    ts: str | None = None
    provider: str = ""
    error: str | None = None
    withheld: str = Field(default="", description="Why the summary failed the safety check (a notice went instead).")
    outcome_unknown: bool = Field(
        default=False, description="An earlier attempt died during the post: whether it reached Slack is unknown."
    )


class Meeting(BaseModel):
    """A follow-up meeting with the customer."""

    meeting_id: str
    join_url: str
    start_time: datetime
    topic: str
    provider: str = ""


class Opportunity(BaseModel):
    """The record logged for an upsell, keyed by event id."""

    opportunity_id: str
    event_id: str
    account_id: str
    metric_type: str
    automation_level: AutomationLevel
    status: UpsellStatus
    recommended_plan: str
    estimated_value: float
    planner: str
    reply: CustomerReply
    email_message_id: str | None = None
    meeting_join_url: str | None = None
    reviewer_note: str = ""
    reply_text: str = Field(default="", description="The customer's emailed reply (quotes and signature removed).")
    flow_run_id: str | None = None
    occurred_at: datetime | None = None
    playbook: str = Field(default="default", description="The playbook the upsell followed (flows/playbooks.py).")
    variant: str = Field(default="", description="The playbook's A/B variant of the email; '' outside an experiment.")
    follow_up_sent: bool = Field(default=False, description="Whether the one follow-up email went out.")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class UpsellOutcome(BaseModel):
    """What the upsell flow returns."""

    status: UpsellStatus
    event_id: str
    account_id: str
    automation_level: AutomationLevel
    email_sent: bool
    email_status: str = ""
    reply: CustomerReply | None = None
    meeting: Meeting | None = None
    opportunity_id: str | None = None
    planner: str | None = None
    planner_reason: str = ""
    slack_posted: bool = False
    reviewer_note: str = ""
    unknown_outcomes: list[str] = Field(
        default_factory=list,
        description="Outward steps an earlier attempt died in: not repeated, for a human to check.",
    )
    standins: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds spent per step.")


# ---- human decisions: one RunInput per kind of wait (rendered as forms in the Prefect UI) ----


#: What a person may record as the customer's answer: `no_reply` is the sweep's answer when nobody replied in time,
#: never a choice in a form.
HUMAN_REPLIES: tuple[CustomerReply, ...] = (CustomerReply.YES, CustomerReply.NO, CustomerReply.MAYBE)


class CustomerReplyInput(RunInput):
    """The customer's answer to the upsell email.

    The saved form offers only yes, no and maybe. An answer without a reply (what the `reply-timeouts` sweep
    sends when the wait expires) means `no_reply`: `no_reply` is written as an empty answer, so the Prefect API,
    which checks every answer against the saved form, accepts it from the sweep while no person is offered it.
    """

    reply: Annotated[
        CustomerReply,
        WithJsonSchema({"type": "string", "enum": [r.value for r in HUMAN_REPLIES]}),
    ] = Field(
        default_factory=lambda: CustomerReply.NO_REPLY,
        title="Customer's answer",
        description="What the customer answered (yes, no or maybe), for example by phone or by email.",
    )

    #: Set by the receiver for an emailed reply (a person may set them too): the customer's words, and what became
    #: of the email when it was not a clear answer.
    text: str = Field(
        default="", max_length=4000, title="Their words",
        description="Optional: what the customer wrote, when they answered by email.",
    )  # fmt: skip
    delivery: Literal["answered", "unclear", "unverified", "bounced", "complained"] = Field(
        default="answered",
        title="How the email went",
        description="answered: the reply above. unclear: a person reads their email and decides. unverified: an"
        " email to the run's reply address that we cannot tell the customer wrote; a person reads it. bounced or"
        " complained (marked as spam): the upsell ends and the address gets no more email.",
    )
    sender: str = Field(
        default="", max_length=320, title="Sent by",
        description="Optional: who sent an unverified email (set by the receiver).",
    )  # fmt: skip
    why: str = Field(
        default="", max_length=300, title="Why it was not applied",
        description="Optional: why an emailed reply could not be taken as the customer's answer (set by the receiver).",
    )  # fmt: skip

    @model_serializer(mode="wrap")
    def _no_reply_as_empty(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.reply is CustomerReply.NO_REPLY:
            data.pop("reply", None)
        for optional in ("text", "sender", "why"):
            if not data.get(optional):
                data.pop(optional, None)
        if self.delivery == "answered":
            data.pop("delivery", None)
        return data


#: The optional "Your name" field of every approval form (shown with the decision on the stage table).
ReviewerName = Annotated[
    str, Field(title="Your name", description="Who decided: shown on the run's stage table.", max_length=100)
]


class EmailApproval(RunInput):
    """A reviewer's decision on the upsell email (HUMAN_INTERVENTION).

    `body_text` is the message only: the answer buttons, the signature and the unsubscribe footer (the signed
    links) are added when the email is built, so a reviewer can neither break nor change them.
    """

    approved: bool = Field(
        title="Send this email", description="Tick to send the email. Leave it unticked to stop the upsell here."
    )
    subject: str = Field(default="", title="Subject", description="The subject line the customer sees.")
    body_text: str = Field(
        default="",
        title="Message",
        description="The message (shown whole above). Buttons, signature and unsubscribe link are added when the"
        " email is sent; empty sends it as drafted.",
    )
    note: str = Field(default="", title="Note for the team", description="Why you approved, changed or stopped it.")
    reviewer: ReviewerName = ""


class MeetingApproval(RunInput):
    """A reviewer's decision on creating the follow-up meeting (HUMAN_INTERVENTION)."""

    approved: bool = Field(
        title="Book the meeting", description="Tick to book the follow-up meeting with the customer."
    )
    note: str = Field(default="", title="Note for the team", description="Optional: why, or what to prepare.")
    reviewer: ReviewerName = ""


class OpportunityReview(RunInput):
    """A sales reviewer's decision before the final steps (HYBRID) or the opportunity log (HUMAN)."""

    approved: bool = Field(title="Approve the upsell", description="Tick to approve; leave unticked to reject it.")
    estimated_value: float = Field(
        ge=0,
        title="Estimated value (per year)",
        description="The added yearly revenue you expect from this upsell, in dollars (0 or more); emptied, it keeps"
        " the value proposed.",
    )
    note: str = Field(default="", title="Note for the team", description="Optional: why you approved or rejected it.")
    reviewer: ReviewerName = ""

    @model_validator(mode="after")
    def _finite_value(self) -> OpportunityReview:
        _finite(self.estimated_value, "estimated_value")
        return self


class ReplyReading(RunInput):
    """A person's reading of an emailed reply the classifier could not call (shown in the form's description)."""

    reply: Annotated[
        CustomerReply, WithJsonSchema({"type": "string", "enum": [r.value for r in CustomerReply]})
    ] = Field(title="The customer's answer", description="What the customer's email says: yes, no or maybe.")
    note: str = Field(default="", title="Note for the team", description="Optional.")
    reviewer: ReviewerName = ""


class SendWindowRelease(RunInput):
    """Sending the email now instead of when the contact's send window opens (the wait's own answer when it does)."""

    note: str = Field(default="", title="Note for the team", description="Optional: why it goes out now.")
    reviewer: ReviewerName = ""


WaitKind = Literal[
    "approve-email", "send-window", "reply", "follow-up-window", "follow-up-reply", "read-reply", "review",
    "approve-meeting", "approve-opportunity",
]

#: The waits for the customer's answer: before the follow-up, after it, and a person reading an unclear emailed
#: reply. The customer's reply link answers any of them.
REPLY_WAITS: tuple[WaitKind, ...] = ("reply", "follow-up-reply", "read-reply")

#: The typed input each kind of wait takes (the pause key of the wait is its kind).
WAIT_INPUTS: dict[str, type[RunInput]] = {
    "reply": CustomerReplyInput,
    "follow-up-reply": CustomerReplyInput,
    "send-window": SendWindowRelease,
    "follow-up-window": SendWindowRelease,
    "read-reply": ReplyReading,
    "approve-email": EmailApproval,
    "approve-meeting": MeetingApproval,
    "review": OpportunityReview,
    "approve-opportunity": OpportunityReview,
}

#: The input that closes a wait nobody answered in time: a normal, Completed outcome.
EXPIRED_WAIT_INPUT: dict[str, dict[str, Any]] = {
    "reply": CustomerReplyInput(reply=CustomerReply.NO_REPLY).model_dump(mode="json"),  # {}: see CustomerReplyInput
    "follow-up-reply": CustomerReplyInput(reply=CustomerReply.NO_REPLY).model_dump(mode="json"),
    "send-window": {"note": "the send window opened"},
    "follow-up-window": {"note": "the send window opened"},
    "read-reply": {"reply": "no_reply", "note": "not read in time"},
    "approve-email": {"approved": False, "subject": "", "body_text": "", "note": "approval timed out"},
    "approve-meeting": {"approved": False, "note": "approval timed out"},
    "review": {"approved": False, "estimated_value": 0.0, "note": "approval timed out"},
    "approve-opportunity": {"approved": False, "estimated_value": 0.0, "note": "approval timed out"},
}


# ---- which alerts start an upsell (the receiver decides with it; the backfill's dry run predicts with it) ----


def qualification(
    alert: UsageAlert, metrics: list[str], severities: list[Severity], high_value_threshold: float
) -> tuple[bool, str | None, str | None]:
    """(qualifies, reason, detail): an eligible metric AND (a qualifying severity OR a high value)."""
    if alert.metric_type not in metrics:
        return False, "metric_not_eligible", f"metric_type {alert.metric_type!r} is not one of {', '.join(metrics)}"
    if alert.severity in severities:
        return True, None, None
    value = 0.0 if alert.current_value is None else alert.current_value
    if value > high_value_threshold:
        return True, None, None
    return False, "below_high_value_threshold", (
        f"severity {alert.severity.value} and current_value {value:g} <= {high_value_threshold:g}"
    )
