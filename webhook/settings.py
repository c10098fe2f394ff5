"""Receiver settings (environment variables prefixed `UPSELL_`), on top of the shared alert-intake settings
(signing secrets and the qualification rule, which the backfill shares)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from flows.recovery import STALE_AFTER_S
from tasks.runtime.settings import AlertIntakeSettings, UpsellSettings

INSECURE_WARNING = "signature checks are OFF (UPSELL_WEBHOOK_INSECURE_DEV=true): development only"
#: The shortest report token and report password accepted.
MIN_REPORT_TOKEN = 16
MIN_REPORT_PASSWORD = 12


class ReceiverFiles(UpsellSettings):
    """Where the receiver keeps its SQLite file: all the funnel report needs of the receiver's settings when it
    runs elsewhere (the CLI, the weekly flow), without the signing secrets the receiver itself requires."""

    receiver_db: Path | None = Field(
        default=None, description="Receiver SQLite file (dedupe, spool, used links); default <data_dir>/receiver.db."
    )

    @property
    def receiver_db_path(self) -> Path:
        return self.receiver_db or self.data_dir / "receiver.db"


class ReceiverSettings(AlertIntakeSettings, ReceiverFiles):
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
    report_token: SecretStr | None = Field(
        default=None, description=f"Bearer token of GET /report (at least {MIN_REPORT_TOKEN} characters)."
    )
    report_user: str | None = Field(default=None, description="HTTP basic user name of GET /report.")
    report_password: SecretStr | None = Field(
        default=None, description=f"HTTP basic password of GET /report (at least {MIN_REPORT_PASSWORD} characters)."
    )

    @model_validator(mode="after")
    def _report_credentials_are_whole(self) -> ReceiverSettings:
        """Credentials of the report that are half set or guessable are refused, not served with."""
        if (self.report_user is None) != (self.report_password is None):
            raise ValueError("UPSELL_REPORT_USER and UPSELL_REPORT_PASSWORD are set together, or neither")
        if self.report_user is not None and (not self.report_user or ":" in self.report_user):
            raise ValueError("UPSELL_REPORT_USER must be a non-empty name without ':'")
        if self.report_token is not None and len(self.report_token.get_secret_value()) < MIN_REPORT_TOKEN:
            raise ValueError(f"UPSELL_REPORT_TOKEN must be at least {MIN_REPORT_TOKEN} characters")
        if self.report_password is not None and len(self.report_password.get_secret_value()) < MIN_REPORT_PASSWORD:
            raise ValueError(f"UPSELL_REPORT_PASSWORD must be at least {MIN_REPORT_PASSWORD} characters")
        return self

    @property
    def report_enabled(self) -> bool:
        """Whether GET /report is served: only with credentials (the report is never public)."""
        return self.report_token is not None or self.report_user is not None
