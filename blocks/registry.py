"""Chooses, at run time, the real client of each integration (from its saved block) or its local stand-in.

Blocks are looked up by document name (`upsell-<service>`); a missing document means the local stand-in.
Nothing here runs at import time.
"""

from __future__ import annotations

import importlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect.blocks.core import Block
from prefect.context import FlowRunContext

from blocks.anthropic import RuleBasedPlanner
from blocks.mongo import SqliteOpportunityStore
from blocks.ses import OutboxEmailSender
from blocks.slack import LocalSlackRecorder
from blocks.sources import FixtureSource
from blocks.zoom import LocalMeetingRecorder
from tasks.runtime.settings import UpsellSettings, get_settings


@dataclass(frozen=True)
class ServiceSpec:
    """How one integration is resolved: its block class, its document name and its local stand-in."""

    service: str
    block_class: str  # "module:Class"
    document: str
    standin: Callable[[UpsellSettings], Any]
    standin_label: str


SERVICES: dict[str, ServiceSpec] = {
    spec.service: spec
    for spec in [
        ServiceSpec(
            "usage",
            "blocks.sources:HttpUsageSource",
            "upsell-usage",
            lambda s: FixtureSource(),
            "bundled fixture accounts",
        ),
        ServiceSpec(
            "crm",
            "blocks.sources:HttpCrmSource",
            "upsell-crm",
            lambda s: FixtureSource(),
            "bundled fixture accounts",
        ),
        ServiceSpec(
            "planner",
            "blocks.anthropic:AnthropicCredentials",
            "upsell-anthropic",
            lambda s: RuleBasedPlanner(),
            "rule-based planner",
        ),
        ServiceSpec(
            "email",
            "blocks.ses:SesEmailSender",
            "upsell-ses",
            lambda s: OutboxEmailSender(s.data_dir / "outbox", from_name=s.sender_name),
            "file outbox",
        ),
        ServiceSpec(
            "slack",
            "blocks.slack:SlackCredentials",
            "upsell-slack",
            lambda s: LocalSlackRecorder(s.data_dir / "slack.jsonl"),
            "local Slack record",
        ),
        ServiceSpec(
            "zoom",
            "blocks.zoom:ZoomCredentials",
            "upsell-zoom",
            lambda s: LocalMeetingRecorder(s.data_dir / "meetings.jsonl"),
            "local meeting record",
        ),
        ServiceSpec(
            "store",
            "blocks.mongo:MongoOpportunityStore",
            "upsell-mongo",
            lambda s: SqliteOpportunityStore(s.data_dir / "upsell.db"),
            "embedded SQLite store",
        ),
    ]
}


@dataclass(frozen=True)
class Resolved:
    """The client chosen for a service, and whether it is the local stand-in."""

    service: str
    client: Any
    standin: bool
    description: str


def _block_class(spec: ServiceSpec) -> type[Block] | None:
    module_name, _, class_name = spec.block_class.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return None  # this integration has no block class in this build
    return getattr(module, class_name)


#: Blocks looked up by the current segment of a flow run: (flow run id, its Running state's id) -> service ->
#: block or None. A segment resolves each service several times (the announcement, then its step); one lookup
#: of all services per segment spares the API. A resumed run is a new segment (new Running state): it sees
#: blocks saved while it waited.
_RUN_LOOKUPS: OrderedDict[tuple[str, str], dict[str, Block | None]] = OrderedDict()
_RUN_LOOKUPS_MAX = 1024
_RUN_LOOKUPS_LOCK = threading.Lock()


def load_blocks() -> dict[str, Block | None]:
    """Every service's saved block document (None when none is saved), in one API request.

    Asks for the documents named `upsell-<service>` at once and keeps each one whose block type is the
    service's block class; the block is built from the document's data (its secrets included).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import BlockDocumentFilter, BlockDocumentFilterName
    from prefect.client.schemas.objects import BlockDocument

    classes = {service: _block_class(spec) for service, spec in SERVICES.items()}
    wanted = {(spec.document, cls.get_block_type_slug()): service
              for service, spec in SERVICES.items() if (cls := classes[service]) is not None}
    names = BlockDocumentFilterName(any_=sorted({name for name, _slug in wanted}))
    with get_client(sync_client=True) as client:
        response = client.request(
            "POST",
            "/block_documents/filter",
            json={
                "block_documents": BlockDocumentFilter(name=names).model_dump(mode="json", exclude_unset=True),
                "include_secrets": True,
                "limit": 200,
            },
        )
    found: dict[str, Block | None] = dict.fromkeys(SERVICES)
    for document in BlockDocument.model_validate_list(response.json()):
        slug = document.block_type.slug if document.block_type is not None else None
        service = wanted.get((document.name or "", slug or ""))
        cls = classes.get(service) if service else None
        if service is not None and cls is not None:
            # the document's fields are the block's fields (ours hold no nested block references)
            found[service] = cls.model_validate(document.data)
    return found


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


def resolve(service: str, settings: UpsellSettings | None = None) -> Resolved:
    """The real client when the service's block is saved, otherwise its local stand-in."""
    spec = SERVICES[service]
    block = load_block(service)
    if block is not None:
        return Resolved(service, block.get_client(), False, f"{spec.document} ({type(block).__name__})")  # type: ignore[attr-defined]
    client = spec.standin(settings or get_settings())
    return Resolved(service, client, True, f"{spec.standin_label}: {client!r}")
