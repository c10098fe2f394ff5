"""Process settings (environment variables prefixed `UPSELL_`), built by a factory, never a singleton.

Integration credentials do not live here: they are Prefect blocks (see `blocks/`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import stat
import threading
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from flows.models import DEFAULT_SEVERITY_LEVELS, AutomationLevel, Severity

DEFAULT_METRICS = ["trade_volume", "trade_value", "balance_change"]
DEFAULT_SEVERITIES = [Severity.HIGH, Severity.CRITICAL]
DEFAULT_RECEIVER_PORT = 8000
#: The placeholder of `sender_postal_address`: fine for the demo, refused in production.
PLACEHOLDER_POSTAL_ADDRESS = "Example Corp, 1 Market Street, San Francisco, CA 94105"
#: The shortest link secret production accepts (the generated one is 64 characters).
MIN_LINK_SECRET_CHARS = 32
#: Where, in the data folder, the generated link secret is kept when UPSELL_LINK_SECRET is not set.
LINK_SECRET_FILE = "link-secret"

logger = logging.getLogger("upsell")


def local_base_url(port: int) -> str:
    """The receiver's address on this machine, the links' base when UPSELL_PUBLIC_BASE_URL is not set."""
    return f"http://127.0.0.1:{port}"


class UpsellSettings(BaseSettings):
    """Settings of the upsell processes (flow runs, receiver, CLI)."""

    # hide_input_in_errors: a refused setting is named in the error, never printed (it may be a secret)
    model_config = SettingsConfigDict(env_prefix="UPSELL_", env_file=None, extra="ignore", hide_input_in_errors=True)

    environment: Literal["development", "production"] = Field(
        default="development",
        description="`development` or `production`. Production refuses a missing or short link secret, the"
        " placeholder postal address, an http or loopback public base URL and the tests-only SNS overrides, naming"
        " the setting, never its value.",
    )
    data_dir: Path = Field(default=Path(".upsell"), description="Where the local stand-ins keep their files.")
    port: int = Field(default=DEFAULT_RECEIVER_PORT, ge=0, le=65535, description="Port the receiver listens on.")
    public_base_url: str = Field(
        default="",
        description="Base URL of the receiver, used in the reply, approval and unsubscribe links; when not set,"
        " http://127.0.0.1:<port>, so the links follow the receiver's port (UPSELL_PORT).",
    )
    #: True when `public_base_url` was not given and follows `port` (`with_port` moves it along).
    _base_url_follows_port: bool = PrivateAttr(default=False)
    link_secret: SecretStr = Field(
        default=SecretStr(""),  # not set: see `_link_secret_kept_in_data_dir`
        description="HMAC key of the reply, approval and unsubscribe links and of the signed Reply-To; when not"
        " set (development only), a random one generated once and kept in <data_dir>/link-secret.",
    )
    link_ttl_s: int = Field(
        default=7 * 86400, gt=0, description="Lifetime of the reply, approval and unsubscribe links, in seconds."
    )
    severity_levels: dict[Severity, AutomationLevel] = Field(
        default_factory=lambda: dict(DEFAULT_SEVERITY_LEVELS),
        description='JSON object, severity → automation level, e.g. `{"high": "FULL_AUTOMATION"}`.',
    )
    reply_timeout_s: float = Field(default=86400.0, gt=0, description="How long to wait for the customer.")
    approval_timeout_s: float = Field(default=3 * 86400.0, gt=0, description="How long to wait for a reviewer.")
    wait_grace_s: float = Field(
        default=3600.0,
        ge=60,
        description="Prefect's own pause timeout is the wait's deadline plus this; the sweep acts first.",
    )
    pause_poll_s: int = Field(default=5, ge=1, description="Poll interval of in-process pauses (direct calls).")
    retry_base_delay_s: float = Field(default=10.0, ge=0, description="First retry delay; doubles each retry.")
    fetch_timeout_s: float = Field(
        default=300.0, gt=0, description="Timeout of one attempt of a reading step (and of the Slack post)."
    )
    send_timeout_s: float = Field(default=600.0, gt=0, description="Timeout of one attempt of a sending step.")
    faults: str = Field(
        default="",
        description="Test and benchmark fault hook (tasks/runtime/faults.py): where a step kills its process.",
    )
    deployment_name: str = Field(
        default="upsell/upsell", description="The deployment the receiver and the CLI trigger upsells on."
    )
    sender_name: str = Field(
        default="Upsell Team",
        description="Sender name in every email's signature (and the `From:` of the local outbox; the SES block has"
        " its own `from_name`).",
    )
    sender_postal_address: str = Field(
        default=PLACEHOLDER_POSTAL_ADDRESS, description="Postal address in every email's footer; set it in production."
    )
    reply_domain: str = Field(
        default="",
        pattern=r"^([A-Za-z0-9-]+\.)+[A-Za-z]{2,}$|^$",
        description="Domain whose mail SES receives (MX record): emails carry a signed Reply-To"
        " upsell+<run>-<signature>@<domain>, so an emailed reply resumes its run. Empty: no Reply-To.",
    )
    meeting_lead_time_h: float = Field(
        default=48.0,
        ge=0,
        description="The meeting is booked at the first weekday 15:00 UTC at least this many hours after the"
        " customer's yes.",
    )
    max_usage_value: float = Field(
        default=1e12, gt=0, description="Usage figures from the source above this stop the upsell for review."
    )
    max_contract_spend: float = Field(
        default=1e9, gt=0, description="A contract spend from the CRM above this stops the upsell for review."
    )
    playbooks_file: Path | None = Field(
        default=None,
        description="The playbooks (YAML, see flows/playbooks.py); unset: the built-in default playbook only.",
    )

    @model_validator(mode="after")
    def _links_follow_the_receiver_port(self) -> UpsellSettings:
        """A receiver moved to another port must not leave every emailed and Slack link on the old one."""
        if not self.public_base_url:
            self.public_base_url = local_base_url(self.port)
            self._base_url_follows_port = True
        return self

    def with_port(self, port: int) -> Self:
        """These settings for a receiver on `port`: the links move along unless UPSELL_PUBLIC_BASE_URL was set."""
        update: dict[str, object] = {"port": port}
        if self._base_url_follows_port:
            update["public_base_url"] = local_base_url(port)
        return self.model_copy(update=update)

    @model_validator(mode="after")
    def _link_secret_kept_in_data_dir(self) -> UpsellSettings:
        """No public default: without UPSELL_LINK_SECRET, development uses the secret kept in the data folder."""
        if not self.link_secret.get_secret_value() and self.environment != "production":
            self.link_secret = _kept_link_secret(self.data_dir)
        return self

    @model_validator(mode="after")
    def _no_placeholders_in_production(self) -> UpsellSettings:
        """Production runs on explicit values: each refusal names its setting, never the value given."""
        if self.environment != "production":
            return self
        when = "when UPSELL_ENVIRONMENT=production"
        if len(self.link_secret.get_secret_value()) < MIN_LINK_SECRET_CHARS:
            raise ValueError(f"UPSELL_LINK_SECRET must be set, at least {MIN_LINK_SECRET_CHARS} characters, {when}")
        if self.sender_postal_address.strip() in ("", PLACEHOLDER_POSTAL_ADDRESS):
            raise ValueError(f"UPSELL_SENDER_POSTAL_ADDRESS must be set to the sender's real postal address {when}")
        if not _is_public_https(self.public_base_url):
            raise ValueError(f"UPSELL_PUBLIC_BASE_URL must be an https URL of a public host (not loopback) {when}")
        return self


def _is_public_https(url: str) -> bool:
    """An https URL whose host is not this machine (localhost, a loopback or unspecified address)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".").lower()
    if parts.scheme != "https" or not host or host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True  # a name
    return not (address.is_loopback or address.is_unspecified)


#: The link secret read from each data folder by this process (see `_kept_link_secret`).
_KEPT_SECRETS: dict[Path, str] = {}
_KEPT_SECRETS_LOCK = threading.Lock()


def _kept_link_secret(data_dir: Path) -> SecretStr:
    """The link secret when UPSELL_LINK_SECRET is not set: generated once per data folder, kept in it (mode 0600),
    so every process of the machine (flow runs, receiver, CLI) signs and checks links with the same key.
    (Production never gets here: it must be given the secret.)"""
    path = (data_dir / LINK_SECRET_FILE).resolve()
    with _KEPT_SECRETS_LOCK:  # read once per folder and process: settings are built on every step call
        secret = _KEPT_SECRETS.get(path)
        if secret is None:
            secret = _KEPT_SECRETS[path] = _read_or_create_secret(path)
    return SecretStr(secret)


def _read_or_create_secret(path: Path) -> str:
    """The secret in `path`, created first when absent. Two processes starting together agree: the secret is
    written to a private temporary file and linked into place, so `path` never exists half-written and the
    process that loses the race reads the winner's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_urlsafe(48) + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.link(temporary, path)  # fails when another process linked its secret first: that one is kept
            logger.warning("UPSELL_LINK_SECRET not set: generated a random link secret in %s", path)
            return _read_secret(path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink(missing_ok=True)
    logger.info("UPSELL_LINK_SECRET not set: using the link secret kept in %s", path)
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:  # readable by others: repair it, the secret signs every link
        logger.warning("%s was readable by other users (mode %o); setting it to 0600", path, mode)
        try:
            path.chmod(0o600)
        except OSError as exc:  # not ours to change: the warning above stands, the secret still works
            logger.warning("could not make %s private: %s", path, exc)
    secret = path.read_text(encoding="utf-8").strip()
    if len(secret) < MIN_LINK_SECRET_CHARS:
        raise ValueError(f"{path} holds no usable link secret (under {MIN_LINK_SECRET_CHARS} characters): "
                         "delete it to have a new one generated, or set UPSELL_LINK_SECRET")
    return secret


def _split(value: object) -> object:
    """Comma-separated environment values (`a,b,c`) become lists; lists pass through."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class AlertIntakeSettings(UpsellSettings):
    """How alerts get in: the secrets that sign them and the rule that qualifies them. The receiver checks
    both; the backfill, which submits alerts to it, signs with the same secrets and applies the same rule."""

    webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="HMAC secrets of X-Upsell-Signature, comma-separated; several are active during rotation.",
    )
    webhook_insecure_dev: bool = Field(
        default=False, description="Development only: accept unsigned alerts. Refused in production."
    )
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

    _split_lists = field_validator(
        "webhook_secrets", "qualifying_metrics", "qualifying_severities", mode="before"
    )(_split)

    @model_validator(mode="after")
    def _signing_is_required(self) -> AlertIntakeSettings:
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

    def secret_values(self) -> list[bytes]:
        return [s.get_secret_value().encode() for s in self.webhook_secrets]


def get_settings() -> UpsellSettings:
    """Read the settings from the environment (a fresh read each call, so tests never patch)."""
    return UpsellSettings()
