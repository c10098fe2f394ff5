"""Receiver settings (environment variables prefixed `UPSELL_`), on top of the shared alert-intake settings
(signing secrets and the qualification rule, which the backfill shares)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from flows.recovery import STALE_AFTER_S
from tasks.runtime.settings import AlertIntakeSettings, UpsellSettings

INSECURE_WARNING = "signature checks are OFF (UPSELL_WEBHOOK_INSECURE_DEV=true): development only"
#: The shortest report token and report password accepted.
MIN_REPORT_TOKEN = 16
MIN_REPORT_PASSWORD = 12
#: Schemes an SNS certificate or SubscribeURL may use (http: tests and development only).
UrlScheme = Literal["https", "http"]
#: The hosts of Amazon SNS that serve signing certificates: sns.<region>.amazonaws.com, and
#: sns.cn-<area>-<n>.amazonaws.com.cn in China; the region label must look like a region, so an S3 bucket host
#: (sns.s3.amazonaws.com, anyone's bucket) does not match.
SNS_HOST_PATTERN = r"^(sns\.[a-z]{2}(-gov)?-[a-z]+-\d\.amazonaws\.com|sns\.cn-[a-z]+-\d\.amazonaws\.com\.cn)$"
#: The most of a body read on a route that takes none, or only a one-click unsubscribe form (27 bytes).
MAX_OTHER_BODY_BYTES = 4096


def _https_only() -> list[UrlScheme]:
    return ["https"]


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
    max_body_bytes: int = Field(default=64 * 1024, gt=0, description="Largest alert body read (POST /alerts).")
    report_token: SecretStr | None = Field(
        default=None, description=f"Bearer token of GET /report (at least {MIN_REPORT_TOKEN} characters)."
    )
    report_user: str | None = Field(default=None, description="HTTP basic user name of GET /report.")
    report_password: SecretStr | None = Field(
        default=None, description=f"HTTP basic password of GET /report (at least {MIN_REPORT_PASSWORD} characters)."
    )
    sns_topic_arns: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="SNS topics (ARNs, comma-separated) whose messages POST /inbound/ses accepts (SES receipts,"
        " bounces, complaints); empty: the endpoint answers 404.",
    )
    sns_cert_host_pattern: str = Field(
        default=SNS_HOST_PATTERN,
        description="Tests only (refused in production when changed): hosts (a regular expression matching the"
        " whole host) that an SNS signing certificate and a SubscribeURL may be fetched from.",
    )
    sns_url_schemes: Annotated[list[UrlScheme], NoDecode] = Field(
        default_factory=_https_only,
        description="Tests only: schemes of those URLs (comma-separated); http (on any port) is for tests and"
        " refused in production.",
    )
    sns_trust_store: Path | None = Field(
        default=None,
        description="Tests only (refused in production): a PEM file of the CAs an SNS signing certificate must"
        " chain to; default: the system trust store (ssl.get_default_verify_paths()).",
    )
    sns_allow_signature_v1: bool = Field(
        default=False,
        description="Accept SNS SignatureVersion 1 (RSA with SHA1) as well as 2 (SHA256); off: set the"
        " subscription's SignatureVersion to 2 in SNS.",
    )
    inbound_s3_buckets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="S3 buckets (comma-separated) an SES receipt may say an inbound email was stored in; empty:"
        " a notification of an S3 action is refused.",
    )
    report_login_failures: int = Field(
        default=5, ge=1, description="Failed logins (report credentials) a client may make per"
        " report_login_window_s before it is answered 429."
    )
    report_login_window_s: float = Field(default=300.0, gt=0, description="The window of report_login_failures.")
    sns_max_age_s: float = Field(default=3600.0, gt=0, description="SNS messages older than this are refused.")
    sns_clock_skew_s: float = Field(
        default=300.0, ge=0, description="SNS messages dated further in the future than this are refused."
    )
    sns_fetch_timeout_s: float = Field(
        default=5.0, gt=0, description="Timeout of fetching an SNS signing certificate or confirming a subscription."
    )
    sns_max_body_bytes: int = Field(
        default=256 * 1024, gt=0, description="Largest SNS message read (SES puts emails up to 150 KB inline)."
    )

    @field_validator("sns_topic_arns", "sns_url_schemes", "inbound_s3_buckets", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("sns_cert_host_pattern")
    @classmethod
    def _host_pattern_compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"UPSELL_SNS_CERT_HOST_PATTERN is not a regular expression: {exc}") from None
        return value

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

    @model_validator(mode="after")
    def _sns_fetches_are_https_in_production(self) -> ReceiverSettings:
        """Certificates fetched over plain http could be anyone's: only tests and development allow it."""
        if self.environment == "production" and self.sns_url_schemes != ["https"]:
            raise ValueError("UPSELL_SNS_URL_SCHEMES must be https when UPSELL_ENVIRONMENT=production")
        if not self.sns_url_schemes:
            raise ValueError("UPSELL_SNS_URL_SCHEMES must name at least one scheme")
        if self.environment == "production" and self.sns_cert_host_pattern != SNS_HOST_PATTERN:
            raise ValueError("UPSELL_SNS_CERT_HOST_PATTERN is for tests: unset it when UPSELL_ENVIRONMENT=production")
        if self.environment == "production" and self.sns_trust_store is not None:
            raise ValueError("UPSELL_SNS_TRUST_STORE is for tests: unset it when UPSELL_ENVIRONMENT=production")
        return self

    def body_limit(self, path: str) -> int:
        """The most of a request body read on `path` (larger: 413 before the route runs)."""
        if path == "/alerts":
            return self.max_body_bytes
        if path == "/inbound/ses":
            return self.sns_max_body_bytes
        return MAX_OTHER_BODY_BYTES

    @property
    def report_enabled(self) -> bool:
        """Whether GET /report is served: only with credentials (the report is never public)."""
        return self.report_token is not None or self.report_user is not None
