"""Chooses, at run time, the real client of each integration (from its saved block) or its local stand-in.

Blocks are looked up by document name (`upsell-<service>`); a missing document means the local stand-in.
Nothing here runs at import time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect.blocks.core import Block

from tasks.local_records import LocalMeetingRecorder, LocalSlackRecorder
from tasks.outbox import OutboxEmailSender
from tasks.planner import RuleBasedPlanner
from tasks.settings import UpsellSettings, get_settings
from tasks.sources import FixtureSource
from tasks.store import SqliteOpportunityStore


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


def load_block(service: str) -> Block | None:
    """The saved block document of a service, or None when none is saved."""
    spec = SERVICES[service]
    cls = _block_class(spec)
    if cls is None:
        return None
    try:
        return cls.load(spec.document)  # type: ignore[return-value]
    except ValueError:  # no such document (or block type not registered): the stand-in applies
        return None


def resolve(service: str, settings: UpsellSettings | None = None) -> Resolved:
    """The real client when the service's block is saved, otherwise its local stand-in."""
    spec = SERVICES[service]
    block = load_block(service)
    if block is not None:
        return Resolved(service, block.get_client(), False, f"{spec.document} ({type(block).__name__})")  # type: ignore[attr-defined]
    client = spec.standin(settings or get_settings())
    return Resolved(service, client, True, f"{spec.standin_label}: {client!r}")
