"""Block for sending the upsell email through Amazon SES (API v2)."""

from __future__ import annotations

import boto3
from botocore.config import Config
from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from tasks.policy import request_timeout
from tasks.ses_client import SesEmailClient


class SesEmailSender(Block):
    """Sends the upsell email with SES `SendEmail` (raw MIME content); needs `ses:SendEmail` on the identity."""

    _block_type_name = "Upsell SES Email Sender"
    _block_type_slug = "upsell-ses-email-sender"
    _description = "Amazon SES (v2 API) sender for the upsell email: region, verified from address, credentials."

    region_name: str = Field(description="AWS region of the SES account, e.g. eu-west-1.")
    from_address: str = Field(description="Verified SES identity (address or an address in a verified domain).")
    from_name: str = Field(default="Upsell Team", description="Display name in the From header.")
    configuration_set: str | None = Field(
        default=None, description="SES configuration set (event publishing, suppression, dedicated IPs)."
    )
    aws_access_key_id: SecretStr | None = Field(
        default=None, description="Leave empty to use the default AWS credential chain (role, profile, env)."
    )
    aws_secret_access_key: SecretStr | None = Field(default=None)
    aws_session_token: SecretStr | None = Field(default=None, description="For temporary credentials.")
    endpoint_url: str | None = Field(default=None, description="Override the SES endpoint (tests, VPC endpoints).")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0, description="After this the send's outcome is unknown.")

    def get_client(self) -> SesEmailClient:
        """An SES sender; botocore does not retry sends (a retried send may deliver twice)."""
        session = boto3.session.Session(
            aws_access_key_id=_secret(self.aws_access_key_id),
            aws_secret_access_key=_secret(self.aws_secret_access_key),
            aws_session_token=_secret(self.aws_session_token),
            region_name=self.region_name,
        )
        config = Config(
            retries={"total_max_attempts": 1, "mode": "standard"},  # one attempt: no hidden resend
            connect_timeout=request_timeout(self.connect_timeout_s),
            read_timeout=request_timeout(self.read_timeout_s),
            user_agent_extra="upsell/0.1",
        )
        client = session.client("sesv2", endpoint_url=self.endpoint_url or None, config=config)
        return SesEmailClient(
            client,
            from_address=self.from_address,
            from_name=self.from_name,
            configuration_set=self.configuration_set or None,
        )


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() or None if value is not None else None
