"""What the local stand-ins of `blocks/` share: JSON-lines records under the data folder."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

_lock = threading.Lock()


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON record as a line of `path` (created with its folder when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock, path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=str) + "\n")
