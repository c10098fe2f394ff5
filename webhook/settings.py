"""Receiver settings (environment variables prefixed `UPSELL_`), on top of the shared alert-intake settings
(signing secrets and the qualification rule, which the backfill shares)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from flows.recovery import STALE_AFTER_S
from tasks.runtime.settings import AlertIntakeSettings

INSECURE_WARNING = "signature checks are OFF (UPSELL_WEBHOOK_INSECURE_DEV=true): development only"


class ReceiverSettings(AlertIntakeSettings):
    """Settings of the webhook receiver: where it listens, how it checks signatures, which alerts qualify."""

    host: str = Field(default="127.0.0.1", description="Interface to listen on (0.0.0.0 in a container).")
    webhook_tolerance_s: int = Field(default=300, gt=0, description="Max age (and clock skew) of a signature.")
    cooldown_s: float = Field(
        default=14 * 86400.0, ge=0, description="Quiet period per account after an upsell ends (14 days)."
    )
    dead_after_s: float = Field(
        default=STALE_AFTER_S,
        gt=0,
        description="An open upsell Running with no heartbeat (or Pending) this long is dead: alerts no longer"
        " attach to it and the account's cooldown starts.",
    )
    receiver_db: Path | None = Field(
        default=None, description="Receiver SQLite file (dedupe, spool, used links); default <data_dir>/receiver.db."
    )
    prefect_api_url: str | None = Field(
        default=None, description="Prefect API the receiver talks to; default: Prefect's own PREFECT_API_URL."
    )
    prefect_timeout_s: float = Field(
        default=5.0, gt=0, description="Longest wait for one Prefect API call before the alert is spooled."
    )
    dispatch_interval_s: float = Field(
        default=2.0, gt=0, description="How often the dispatcher retries the spool while the API is down."
    )
    replay_concurrency: int = Field(default=8, ge=1, description="Accounts replayed from the spool in parallel.")
    max_body_bytes: int = Field(default=64 * 1024, gt=0)

    @property
    def receiver_db_path(self) -> Path:
        return self.receiver_db or self.data_dir / "receiver.db"
