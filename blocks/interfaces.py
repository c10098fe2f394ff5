"""The small interfaces every integration implements: a real client (configured by a block) and a local
stand-in (used when no block is saved). Tasks depend on these, never on a concrete client."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from email.message import EmailMessage
from enum import StrEnum
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from flows.models import ContractData, Meeting, Opportunity, PlanResult, UpsellPlan, UsageAlert, UsageData


class PermanentError(Exception):
    """A failure that retrying cannot fix (bad input, 4xx answer): tasks do not retry it."""


class SendOutcomeUnknown(Exception):
    """A send may or may not have reached the provider (timeout after the request went out)."""


class IntegrationError(Exception):
    """A vendor's failure reduced to plain data: the service, the HTTP status (None when there was no answer) and
    the message. It keeps no request, response, client or headers, so what Prefect persists of a failed step (its
    exception, pickled) holds no credential; `status_code` is what the retry policy decides on."""

    def __init__(self, service: str, status_code: int | None, message: str) -> None:
        super().__init__(service, status_code, message)
        self.service = service
        self.status_code = status_code
        self.message = message

    def __str__(self) -> str:
        answered = f" answered {self.status_code}" if self.status_code is not None else " failed"
        return f"{self.service}{answered}: {self.message}"


class UsageSource(Protocol):
    """Where usage figures come from."""

    def fetch_usage(self, alert: UsageAlert) -> UsageData: ...


class CrmSource(Protocol):
    """Where contracts come from."""

    def fetch_contract(self, account_id: str) -> ContractData: ...


#: The content check a model's plan must pass (the first rule it breaks, named, or None). The planner's caller
#: owns the content policy and hands it in; a planner that writes its own text may ignore it.
PlanReview = Callable[[UpsellPlan], str | None]


class Planner(Protocol):
    """Turns usage and contract into an upsell plan."""

    max_value_ratio: float  # the plan's value is at most this many times the spend (and the list price)

    def plan(self, usage: UsageData, contract: ContractData, *, review: PlanReview) -> PlanResult:
        """A plan; a model's answer that `review` finds a problem in is not used as it is."""
        ...


class ReplyIntent(StrEnum):
    """What a customer's emailed reply to the upsell email means; `unclear` goes to a person."""

    YES = "yes"
    NO = "no"
    MAYBE = "maybe"
    UNCLEAR = "unclear"


class ReplyClassifier(Protocol):
    """Reads the customer's new words of an emailed reply (quotes and signature already removed)."""

    name: str  # "claude" or "rule-based", for the run log

    def classify(self, text: str) -> ReplyIntent:
        """The reply's intent; `unclear` when the text does not say, or the answer could not be trusted."""
        ...


class EmailSender(Protocol):
    """Delivers one built email (to its To address) and returns the provider's message id."""

    from_address: str  # the From of the messages it sends (a verified SES identity)
    from_name: str

    def send(self, message: EmailMessage, *, idempotency_key: str) -> str: ...


class Mailbox(Protocol):
    """Where a received email is stored (an SES receipt rule's S3 action)."""

    def read(self, bucket: str, key: str) -> bytes: ...

    def close(self) -> None: ...


class SlackPost(BaseModel):
    """A Slack summary before it is posted."""

    text: str
    blocks: list[dict[str, Any]]
    channel: str | None = None


class ChatNotifier(Protocol):
    """Posts a summary to the sales team's channel; returns (channel, ts)."""

    def post(self, message: SlackPost) -> tuple[str, str]: ...


class MeetingScheduler(Protocol):
    """Books a follow-up meeting."""

    def create_meeting(self, *, topic: str, start_time: datetime, invitee: str, agenda: str) -> Meeting: ...


ClaimStatus = Literal["claimed", "done", "pending", "unknown"]


class Claim(BaseModel):
    """The answer of `OpportunityStore.claim`: whether this caller may perform the outward step."""

    status: ClaimStatus
    result: dict[str, Any] | None = None


class OpportunityStore(Protocol):
    """Opportunities and the idempotency records that keep outward steps from happening twice."""

    def claim(self, event_id: str, step: str) -> Claim:
        """Claim (event, step): `claimed` if this caller is first, else the state the record is in."""
        ...

    def complete(self, event_id: str, step: str, result: dict[str, Any]) -> None:
        """Record that the claimed step happened, with its result."""
        ...

    def release(self, event_id: str, step: str, error: str) -> None:
        """Give a claim back: the step certainly did not happen and may be tried again."""
        ...

    def mark_unknown(self, event_id: str, step: str, error: str) -> None:
        """Flag a claimed step whose outcome is unknown, for a human; it is never retried automatically."""
        ...

    def get_record(self, event_id: str, step: str) -> dict[str, Any] | None: ...

    def upsert_opportunity(self, opportunity: Opportunity) -> None:
        """Log the opportunity; logging the same event again replaces it (idempotent)."""
        ...

    def get_opportunity(self, event_id: str) -> Opportunity | None: ...

    def list_opportunities(self, account_id: str | None = None, limit: int = 100) -> list[Opportunity]: ...

    def opportunities_since(self, since: datetime | None) -> list[Opportunity]:
        """The opportunities logged (`created_at`) at or after `since`, all when None; oldest first."""
        ...

    def add_suppression(self, email: str, reason: str) -> None:
        """Never email this address again (unsubscribe)."""
        ...

    def is_suppressed(self, email: str) -> bool: ...

    def close(self) -> None: ...
