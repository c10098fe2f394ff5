"""MkDocs hook: the settings page (docs/settings.md) rendered from the settings classes at build time, so every
setting is documented once, where it is declared."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

MARKER = "<!-- settings-reference -->"

#: Settings declared without a description; say it here until the class carries one (the class's wins).


def _is_secret(info: FieldInfo) -> bool:
    return "SecretStr" in repr(info.annotation)


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _default(name: str, info: FieldInfo) -> str:
    if _is_secret(info):  # never a value, whatever the declaration holds
        return "generated" if name == "link_secret" else "unset"
    value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    if value is PydanticUndefined or value is None or value == "" or value == []:
        return "unset"
    if isinstance(value, SecretStr):
        return "unset"
    value = _plain(value)
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{int(value)}`" if value.is_integer() and abs(value) < 1e7 else f"`{value:g}`"
    if isinstance(value, list):
        return f"`{','.join(str(v) for v in value)}`"
    if isinstance(value, dict):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def _table(fields: dict[str, FieldInfo]) -> list[str]:
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, info in fields.items():
        description = info.description or ""
        description = " ".join(description.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        lines.append(f"| `UPSELL_{name.upper()}` | {_default(name, info)} | {description} |")
    return lines


def settings_reference() -> str:
    """One table per settings class, each field in the class that declares it."""
    from tasks.runtime.settings import AlertIntakeSettings, UpsellSettings
    from webhook.settings import ReceiverSettings

    seen: set[str] = set()
    lines: list[str] = []
    for cls in (UpsellSettings, AlertIntakeSettings, ReceiverSettings):
        own = {name: info for name, info in cls.model_fields.items() if name not in seen}
        seen.update(own)
        doc = " ".join((cls.__doc__ or "").split())
        lines += [f"## `{cls.__name__}`", "", f"`{cls.__module__}.{cls.__name__}`: {doc}", "", *_table(own), ""]
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri == "settings.md":
        return markdown.replace(MARKER, settings_reference())
    return markdown
