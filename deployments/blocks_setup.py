"""`upsell blocks create`: save the block documents `upsell-<service>` from `UPSELL_*` environment variables.

A service is saved only when its required variables are set; setting some of a service's variables but not
all the required ones is an error naming what is missing (a half-configured service would silently fall
back to its local stand-in). Empty values count as unset.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect.blocks.core import Block


class BlocksConfigError(ValueError):
    """The UPSELL_* variables describe a service only partly, or hold an invalid value."""


@dataclass(frozen=True)
class EnvBlock:
    """How one service's block is built from environment variables: {block field: variable}."""

    service: str  # key of blocks.registry.SERVICES
    required: dict[str, str]
    optional: dict[str, str] = field(default_factory=dict)
    json_fields: frozenset[str] = frozenset()  # fields given as JSON objects
    together: tuple[tuple[str, str], ...] = ()  # variables that only make sense as a pair
    fallbacks: dict[str, str] = field(default_factory=dict)  # used when set, but never enable the service


ENV_BLOCKS: list[EnvBlock] = [
    EnvBlock(
        "planner",
        required={"api_key": "UPSELL_ANTHROPIC_API_KEY"},
        optional={"model": "UPSELL_ANTHROPIC_MODEL", "base_url": "UPSELL_ANTHROPIC_BASE_URL"},
    ),
    EnvBlock(
        "email",
        required={"region_name": "UPSELL_SES_REGION", "from_address": "UPSELL_SES_FROM_ADDRESS"},
        optional={
            "from_name": "UPSELL_SES_FROM_NAME",
            "endpoint_url": "UPSELL_SES_ENDPOINT_URL",
            "configuration_set": "UPSELL_SES_CONFIGURATION_SET",
            "aws_access_key_id": "UPSELL_AWS_ACCESS_KEY_ID",
            "aws_secret_access_key": "UPSELL_AWS_SECRET_ACCESS_KEY",
            "aws_session_token": "UPSELL_AWS_SESSION_TOKEN",
        },
        together=(("UPSELL_AWS_ACCESS_KEY_ID", "UPSELL_AWS_SECRET_ACCESS_KEY"),),
        fallbacks={"from_name": "UPSELL_SENDER_NAME"},
    ),
    EnvBlock(
        "slack",
        required={"bot_token": "UPSELL_SLACK_BOT_TOKEN"},
        optional={"channel": "UPSELL_SLACK_CHANNEL", "base_url": "UPSELL_SLACK_BASE_URL"},
    ),
    EnvBlock(
        "zoom",
        required={
            "account_id": "UPSELL_ZOOM_ACCOUNT_ID",
            "client_id": "UPSELL_ZOOM_CLIENT_ID",
            "client_secret": "UPSELL_ZOOM_CLIENT_SECRET",
        },
        optional={"api_base_url": "UPSELL_ZOOM_API_BASE_URL", "oauth_base_url": "UPSELL_ZOOM_OAUTH_BASE_URL"},
    ),
    EnvBlock(
        "store",
        required={"uri": "UPSELL_MONGO_URI"},
        optional={"database": "UPSELL_MONGO_DATABASE", "collection": "UPSELL_MONGO_COLLECTION"},
    ),
    EnvBlock(
        "usage",
        required={"base_url": "UPSELL_USAGE_BASE_URL"},
        optional={"token": "UPSELL_USAGE_TOKEN", "field_mapping": "UPSELL_USAGE_FIELD_MAPPING"},
        json_fields=frozenset({"field_mapping"}),
    ),
    EnvBlock(
        "crm",
        required={"base_url": "UPSELL_CRM_BASE_URL"},
        optional={"token": "UPSELL_CRM_TOKEN", "field_mapping": "UPSELL_CRM_FIELD_MAPPING"},
        json_fields=frozenset({"field_mapping"}),
    ),
]


def _value(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    return value.strip() if value is not None and value.strip() else None


def _fields(spec: EnvBlock, environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The block's fields from the environment, or None when none of the service's variables is set."""
    variables = {**spec.required, **spec.optional}
    present = {f: v for f, var in variables.items() if (v := _value(environ, var)) is not None}
    if not present:
        return None
    missing = [var for f, var in spec.required.items() if f not in present]
    missing += [b for a, b in spec.together if _value(environ, a) and not _value(environ, b)]
    missing += [a for a, b in spec.together if _value(environ, b) and not _value(environ, a)]
    if missing:
        given = ", ".join(sorted(variables[f] for f in present))
        raise BlocksConfigError(f"{spec.service} is half-configured: {given} set but {', '.join(missing)} missing")
    for name, var in spec.fallbacks.items():
        if name not in present and (fallback := _value(environ, var)) is not None:
            present[name] = fallback
    for name in spec.json_fields & present.keys():
        try:
            present[name] = json.loads(present[name])
        except ValueError as exc:
            raise BlocksConfigError(f"{variables[name]} must be a JSON object: {exc}") from exc
    return present


def create_blocks_from_env(environ: Mapping[str, str]) -> list[str]:
    """Save `upsell-<service>` for every fully configured service; returns the saved document names.

    Every service is validated before anything is saved, so a mistake in one leaves the others untouched.
    """
    # the document names and block classes the flow loads; imported here: the CLI loads vendor SDKs only to save
    from blocks.registry import SERVICES

    pending: list[tuple[str, Block]] = []
    for spec in ENV_BLOCKS:
        values = _fields(spec, environ)
        if values is None:
            continue
        service = SERVICES[spec.service]
        try:
            block = service.block_class(**values)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise BlocksConfigError(f"{service.document}: invalid configuration: {exc}") from exc
        pending.append((service.document, block))
    for document, block in pending:
        block.save(document, overwrite=True)
    return [document for document, _ in pending]
