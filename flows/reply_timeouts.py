"""The reply-timeouts flow: a scheduled sweep that ends unanswered waits as a normal outcome."""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from tasks.close_expired_waits import close_expired_waits
from tasks.runtime.policy import configured


@flow(name="reply-timeouts")
def reply_timeouts(now: datetime | None = None, limit: int = 500) -> list[str]:
    """Resume upsell waits past their deadline with `no_reply` (or a timed-out approval)."""
    return configured(close_expired_waits)(now, limit)
