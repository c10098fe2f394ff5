"""Receiver settings (environment variables prefixed `UPSELL_`), on top of the shared process settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from flows.models import Severity
from flows.recovery import STALE_AFTER_S
from tasks.runtime.settings import UpsellSettings

DEFAULT_METRICS = ["trade_volume", "trade_value", "balance_change"]
DEFAULT_SEVERITIES = [Severity.HIGH, Severity.CRITICAL]


def _split(value: object) -> object:
    """Comma-separated environment values (`a,b,c`) become lists; lists pass through."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ReceiverSettings(UpsellSettings):
    """Settings of the webhook receiver: where it listens, how it checks signatures, which alerts qualify."""

    host: str = Field(default="127.0.0.1", description="Interface to listen on (0.0.0.0 in a container).")
    port: int = Field(default=8000, ge=0, le=65535)
    webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="HMAC secrets of X-Upsell-Signature, comma-separated; several are active during rotation.",
    )
    webhook_insecure_dev: bool = Field(
        default=False, description="Development only: accept unsigned alerts. Refused in production."
    )
    webhook_tolerance_s: int = Field(default=300, gt=0, description="Max age (and clock skew) of a signature.")
    qualifying_metrics: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_METRICS), description="Metrics that can start an upsell."
    )
    qualifying_severities: Annotated[list[Severity], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_SEVERITIES),
        description="Severities that qualify on their own (other alerts need the high-value threshold).",
    )
    high_value_threshold: float = Field(
        default=1000.0, ge=0, allow_inf_nan=False, description="current_value above this qualifies any severity."
    )
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

    _split_lists = field_validator(
        "webhook_secrets", "qualifying_metrics", "qualifying_severities", mode="before"
    )(_split)

    @model_validator(mode="after")
    def _signing_is_required(self) -> ReceiverSettings:
        secrets = [s.get_secret_value() for s in self.webhook_secrets]
        if self.webhook_insecure_dev and self.environment == "production":
            raise ValueError("UPSELL_WEBHOOK_INSECURE_DEV is refused when UPSELL_ENVIRONMENT=production")
        if not self.webhook_insecure_dev and not secrets:
            raise ValueError(
                "UPSELL_WEBHOOK_SECRETS must be set (comma-separated); for local development only, "
                "UPSELL_WEBHOOK_INSECURE_DEV=true accepts unsigned alerts"
            )
        if any(len(s) < 16 for s in secrets):
            raise ValueError("each UPSELL_WEBHOOK_SECRETS entry must be at least 16 characters")
        return self

    @property
    def signing_required(self) -> bool:
        return not self.webhook_insecure_dev

    @property
    def receiver_db_path(self) -> Path:
        return self.receiver_db or self.data_dir / "receiver.db"

    def secret_values(self) -> list[bytes]:
        return [s.get_secret_value().encode() for s in self.webhook_secrets]
