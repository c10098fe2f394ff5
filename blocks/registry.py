"""Chooses, at run time, the real client of each integration (from its saved block) or its local stand-in.

Blocks are looked up by document name (`upsell-<service>`); a missing document means the local stand-in.
Nothing here runs at import time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar, overload

from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext

from blocks.anthropic import AnthropicCredentials, RuleBasedPlanner
from blocks.interfaces import (
    ChatNotifier,
    CrmSource,
    EmailSender,
    Mailbox,
    MeetingScheduler,
    OpportunityStore,
    Planner,
    ReplyClassifier,
    UsageSource,
)
from blocks.mongo import MongoOpportunityStore, SqliteOpportunityStore
from blocks.reply_rules import RuleBasedReplyClassifier
from blocks.ses import LocalMailbox, OutboxEmailSender, SesEmailSender
from blocks.slack import LocalSlackRecorder, SlackCredentials
from blocks.sources import FixtureSource, HttpCrmSource, HttpUsageSource
from blocks.zoom import LocalMeetingRecorder, ZoomCredentials

B = TypeVar("B", bound=Block)
C = TypeVar("C")


class StandinSettings(Protocol):
    """What the local stand-ins need of the process settings (`tasks.runtime.settings.UpsellSettings` has it)."""

    @property
    def data_dir(self) -> Path: ...  # where the stand-ins keep their files

    @property
    def sender_name(self) -> str: ...  # From name of the outbox's emails


@dataclass(frozen=True)
class ServiceSpec(Generic[B, C]):
    """How one integration is resolved: its block class and document name, and its local stand-in.

    `connect` (the block's `get_client`) and `standin` build the same interface `C`, which mypy checks.
    """

    service: str
    block_class: type[B]
    document: str
    connect: Callable[[B], C]
    standin: Callable[[StandinSettings], C]
    standin_label: str


USAGE: ServiceSpec[HttpUsageSource, UsageSource] = ServiceSpec(
    "usage", HttpUsageSource, "upsell-usage", HttpUsageSource.get_client,
    lambda s: FixtureSource(), "bundled fixture accounts",
)  # fmt: skip
CRM: ServiceSpec[HttpCrmSource, CrmSource] = ServiceSpec(
    "crm", HttpCrmSource, "upsell-crm", HttpCrmSource.get_client,
    lambda s: FixtureSource(), "bundled fixture accounts",
)  # fmt: skip
PLANNER: ServiceSpec[AnthropicCredentials, Planner] = ServiceSpec(
    "planner", AnthropicCredentials, "upsell-anthropic", AnthropicCredentials.get_client,
    lambda s: RuleBasedPlanner(), "rule-based planner",
)  # fmt: skip
#: Reads the customer's emailed replies: Claude through the planner's block (one key, one model), or word lists.
CLASSIFIER: ServiceSpec[AnthropicCredentials, ReplyClassifier] = ServiceSpec(
    "classifier", AnthropicCredentials, "upsell-anthropic", AnthropicCredentials.get_classifier,
    lambda s: RuleBasedReplyClassifier(), "rule-based reply classifier",
)  # fmt: skip
EMAIL: ServiceSpec[SesEmailSender, EmailSender] = ServiceSpec(
    "email", SesEmailSender, "upsell-ses", SesEmailSender.get_client,
    lambda s: OutboxEmailSender(s.data_dir / "outbox", from_name=s.sender_name), "file outbox",
)  # fmt: skip
SLACK: ServiceSpec[SlackCredentials, ChatNotifier] = ServiceSpec(
    "slack", SlackCredentials, "upsell-slack", SlackCredentials.get_client,
    lambda s: LocalSlackRecorder(s.data_dir / "slack.jsonl"), "local Slack record",
)  # fmt: skip
ZOOM: ServiceSpec[ZoomCredentials, MeetingScheduler] = ServiceSpec(
    "zoom", ZoomCredentials, "upsell-zoom", ZoomCredentials.get_client,
    lambda s: LocalMeetingRecorder(s.data_dir / "meetings.jsonl"), "local meeting record",
)  # fmt: skip
STORE: ServiceSpec[MongoOpportunityStore, OpportunityStore] = ServiceSpec(
    "store", MongoOpportunityStore, "upsell-mongo", MongoOpportunityStore.get_client,
    lambda s: SqliteOpportunityStore(s.data_dir / "upsell.db"), "embedded SQLite store",
)  # fmt: skip

#: Reads the emails SES received into S3: with the SES block's account, or from a local folder.
MAILBOX: ServiceSpec[SesEmailSender, Mailbox] = ServiceSpec(
    "mailbox", SesEmailSender, "upsell-ses", SesEmailSender.get_mailbox,
    lambda s: LocalMailbox(s.data_dir / "inbound"), "local mail folder",
)  # fmt: skip

SERVICES: dict[str, ServiceSpec[Any, Any]] = {
    spec.service: spec for spec in (USAGE, CRM, PLANNER, CLASSIFIER, EMAIL, SLACK, ZOOM, STORE, MAILBOX)
}
#: The services an upsell run uses (the receiver uses the classifier and the mailbox for emailed replies).
FLOW_SERVICES = ("usage", "crm", "planner", "email", "slack", "zoom", "store")


@dataclass(frozen=True)
class Resolved(Generic[C]):
    """The client chosen for a service, and whether it is the local stand-in."""

    service: str
    client: C
    standin: bool
    description: str


#: Blocks looked up by the current segment of a flow run: (flow run id, its Running state's id) -> service ->
#: block or None. A segment resolves each service several times (the announcement, then its step); one lookup
#: of all services per segment spares the API. A resumed run is a new segment (new Running state): it sees
#: blocks saved while it waited.
_RUN_LOOKUPS: OrderedDict[tuple[str, str], dict[str, Block | None]] = OrderedDict()
_RUN_LOOKUPS_MAX = 1024
_RUN_LOOKUPS_LOCK = threading.Lock()
#: Block documents read per API request (Prefect's default cap on a page).
_PAGE = 200


def load_blocks() -> dict[str, Block | None]:
    """Every service's saved block document (None when none is saved), in one lookup.

    Reads the block documents (a page of `_PAGE` at a time, usually one page) and keeps each one named
    `upsell-<service>` whose block type is the service's block class; the block is built from the document's
    data (its secrets included).
    """
    wanted: dict[tuple[str, str], list[ServiceSpec[Any, Any]]] = {}
    for spec in SERVICES.values():  # a document may serve several services (upsell-anthropic: planner, classifier)
        wanted.setdefault((spec.document, spec.block_class.get_block_type_slug()), []).append(spec)
    found: dict[str, Block | None] = dict.fromkeys(SERVICES)
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            page = client.read_block_documents(limit=_PAGE, offset=offset, include_secrets=True)
            for document in page:
                slug = document.block_type.slug if document.block_type is not None else ""
                for spec in wanted.get((document.name or "", slug), []):
                    # the document's fields are the block's fields (ours hold no nested block references)
                    found[spec.service] = spec.block_class.model_validate(document.data)
            if len(page) < _PAGE:
                return found
            offset += len(page)


def load_block(service: str) -> Block | None:
    """The saved block document of a service, or None when none is saved (all looked up once per segment)."""
    SERVICES[service]  # an unknown service is a KeyError, as before any lookup
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    if run is None or run.state is None:
        return load_blocks()[service]
    key = (str(run.id), str(run.state.id))
    with _RUN_LOOKUPS_LOCK:
        blocks = _RUN_LOOKUPS.get(key)
    if blocks is None:
        blocks = load_blocks()
        with _RUN_LOOKUPS_LOCK:
            _RUN_LOOKUPS[key] = blocks
            while len(_RUN_LOOKUPS) > _RUN_LOOKUPS_MAX:
                _RUN_LOOKUPS.popitem(last=False)
    return blocks[service]


@overload
def resolve(service: Literal["usage"], settings: StandinSettings) -> Resolved[UsageSource]: ...
@overload
def resolve(service: Literal["crm"], settings: StandinSettings) -> Resolved[CrmSource]: ...
@overload
def resolve(service: Literal["planner"], settings: StandinSettings) -> Resolved[Planner]: ...
@overload
def resolve(service: Literal["classifier"], settings: StandinSettings) -> Resolved[ReplyClassifier]: ...
@overload
def resolve(service: Literal["email"], settings: StandinSettings) -> Resolved[EmailSender]: ...
@overload
def resolve(service: Literal["slack"], settings: StandinSettings) -> Resolved[ChatNotifier]: ...
@overload
def resolve(service: Literal["zoom"], settings: StandinSettings) -> Resolved[MeetingScheduler]: ...
@overload
def resolve(service: Literal["store"], settings: StandinSettings) -> Resolved[OpportunityStore]: ...
@overload
def resolve(service: Literal["mailbox"], settings: StandinSettings) -> Resolved[Mailbox]: ...
@overload
def resolve(service: str, settings: StandinSettings) -> Resolved[object]: ...
def resolve(service: str, settings: StandinSettings) -> Resolved[Any]:
    """The real client when the service's block is saved, otherwise its local stand-in (built from `settings`)."""
    spec = SERVICES[service]
    block = load_block(service)
    if block is not None:
        return Resolved(service, spec.connect(block), False, f"{spec.document} ({type(block).__name__})")
    client = spec.standin(settings)
    return Resolved(service, client, True, f"{spec.standin_label}: {client!r}")
