"""Local stand-ins for Slack and Zoom: JSON-lines records under the data folder."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.models import Meeting
from tasks.interfaces import SlackPost

_lock = threading.Lock()


def _append(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock, path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=str) + "\n")


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record written so far (empty when none)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class LocalSlackRecorder:
    """Appends each Slack summary to `slack.jsonl` instead of posting it."""

    def __init__(self, path: Path, channel: str = "#sales-upsell") -> None:
        self.path = path
        self.channel = channel

    def __repr__(self) -> str:
        return f"LocalSlackRecorder({str(self.path)!r})"

    def post(self, message: SlackPost) -> tuple[str, str]:
        ts = f"{time.time():.6f}"
        channel = message.channel or self.channel
        _append(self.path, {"channel": channel, "ts": ts, "text": message.text, "blocks": message.blocks})
        return channel, ts


class LocalMeetingRecorder:
    """Books meetings into `meetings.jsonl` with a local join URL instead of calling Zoom."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"LocalMeetingRecorder({str(self.path)!r})"

    def create_meeting(self, *, topic: str, start_time: datetime, invitee: str, agenda: str) -> Meeting:
        meeting_id = uuid.uuid4().hex[:11]
        meeting = Meeting(
            meeting_id=meeting_id,
            join_url=f"http://localhost/local-meetings/{meeting_id}",
            start_time=start_time.astimezone(UTC),
            topic=topic,
            provider="local",
        )
        _append(self.path, {**meeting.model_dump(mode="json"), "invitee": invitee, "agenda": agenda})
        return meeting
