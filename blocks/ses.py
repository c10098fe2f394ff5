"""Block for sending the upsell email through Amazon SES (API v2)."""

from __future__ import annotations

import os
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ConnectionClosedError, ReadTimeoutError
from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from blocks.interfaces import PermanentError, SendOutcomeUnknown
from blocks.limits import acquire_rate_limit, request_timeout

#: Long URL headers (List-Unsubscribe) must stay plain ASCII, not RFC 2047 encoded-words: fold at 998.
WIRE_POLICY = policy.SMTP.clone(max_line_length=998)


class OutboxEmailSender:
    """Writes `<outbox>/<idempotency key>.eml`; the same key never produces a second file."""

    def __init__(self, outbox: Path, from_address: str = "upsell@localhost", from_name: str = "Upsell Team") -> None:
        self.outbox = outbox
        self.from_address = from_address
        self.from_name = from_name

    def __repr__(self) -> str:
        return f"OutboxEmailSender({str(self.outbox)!r})"

    def path_for(self, idempotency_key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in idempotency_key)
        return self.outbox / f"{safe}.eml"

    def send(self, message: EmailMessage, *, idempotency_key: str) -> str:
        """Write the message as `.eml`; returns its Message-ID (the earlier file's, when the key was sent)."""
        self.outbox.mkdir(parents=True, exist_ok=True)
        path = self.path_for(idempotency_key)
        if path.exists():  # written before a crash: the same email, not a new one
            with path.open("rb") as handle:
                return str(BytesParser(policy=policy.default).parse(handle)["Message-ID"])
        tmp = path.with_suffix(".eml.tmp")
        tmp.write_bytes(message.as_bytes(policy=WIRE_POLICY))
        os.replace(tmp, path)  # atomic: the outbox never holds half an email
        return str(message["Message-ID"])


#: Header carrying our idempotency key, so a duplicate found in the mailbox can be traced to its event.
IDEMPOTENCY_HEADER = "X-Upsell-Idempotency-Key"


class SesEmailClient:
    """Sends the upsell email as one raw MIME message (built by the caller, From this client's identity) to the
    message's To address.

    `client` is a boto3 `sesv2` client built with botocore's retries off: SES has no idempotency token, so
    a retried send could deliver twice. The task's idempotency record decides about retries instead.
    """

    def __init__(
        self, client: Any, *, from_address: str, from_name: str = "", configuration_set: str | None = None
    ) -> None:
        self.client = client
        self.from_address = from_address
        self.from_name = from_name
        self.configuration_set = configuration_set

    def __repr__(self) -> str:
        return f"SesEmailClient({self.client.meta.region_name}, from={self.from_address!r})"

    def send(self, message: EmailMessage, *, idempotency_key: str) -> str:
        """Send the message as it is, plus the idempotency header; returns SES's message id."""
        to_headers = [str(value) for value in message.get_all("To", [])]
        recipients = [address for _name, address in getaddresses(to_headers) if address]
        if not recipients:
            raise PermanentError("the message has no To address")
        del message[IDEMPOTENCY_HEADER]  # one header, whoever set it before
        message[IDEMPOTENCY_HEADER] = idempotency_key
        request: dict[str, Any] = {
            "FromEmailAddress": str(message["From"]),
            "Destination": {"ToAddresses": recipients},
            "Content": {"Raw": {"Data": message.as_bytes(policy=WIRE_POLICY)}},
        }
        if self.configuration_set:
            request["ConfigurationSetName"] = self.configuration_set
        acquire_rate_limit("upsell-ses")  # the account's SES send rate, shared by every worker
        try:
            response = self.client.send_email(**request)
        except (ReadTimeoutError, ConnectionClosedError) as exc:
            # The request went out; SES may have accepted it. Resending could email the customer twice.
            raise SendOutcomeUnknown(f"SES send for {idempotency_key} has an unknown outcome: {exc}") from exc
        return str(response["MessageId"])

    def header_message_id(self, provider_id: str) -> str:
        """The Message-ID the recipient sees on the email SES sent as `provider_id` (SES replaces ours with it)."""
        region = self.client.meta.region_name
        return f"<{provider_id}@{'email' if region == 'us-east-1' else region}.amazonses.com>"

    def close(self) -> None:
        self.client.close()


#: The largest email read from S3 (SES receives up to 40 MB; a reply worth reading is far smaller).
MAX_INBOUND_BYTES = 10 * 1024 * 1024


class S3Mailbox:
    """Reads the raw emails an SES receipt rule stored in S3 (the rule's S3 action)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def __repr__(self) -> str:
        return f"S3Mailbox({self.client.meta.region_name})"

    def read(self, bucket: str, key: str) -> bytes:
        """The stored email, at most MAX_INBOUND_BYTES of it (PermanentError when it is not there)."""
        try:
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
        except self.client.exceptions.NoSuchKey as exc:
            raise PermanentError(f"no stored email s3://{bucket}/{key}") from exc
        try:
            return bytes(body.read(MAX_INBOUND_BYTES))
        finally:
            body.close()

    def close(self) -> None:
        self.client.close()


class LocalMailbox:
    """The local stand-in of the S3 mailbox: `<folder>/<bucket>/<key>` files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __repr__(self) -> str:
        return f"LocalMailbox({str(self.folder)!r})"

    def read(self, bucket: str, key: str) -> bytes:
        path = (self.folder / bucket / key).resolve()
        if not path.is_relative_to(self.folder.resolve()) or not path.is_file():
            raise PermanentError(f"no stored email {bucket}/{key}")
        return path.read_bytes()[:MAX_INBOUND_BYTES]

    def close(self) -> None:
        return None


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

    def _client(self, service: str, attempts: int) -> Any:
        """A boto3 client of the block's account and region, with its timeouts and `attempts` tries per call."""
        session = boto3.session.Session(
            aws_access_key_id=_secret(self.aws_access_key_id),
            aws_secret_access_key=_secret(self.aws_secret_access_key),
            aws_session_token=_secret(self.aws_session_token),
            region_name=self.region_name,
        )
        config = Config(
            retries={"total_max_attempts": attempts, "mode": "standard"},
            connect_timeout=request_timeout(self.connect_timeout_s),
            read_timeout=request_timeout(self.read_timeout_s),
            user_agent_extra="upsell/0.1",
        )
        return session.client(service, endpoint_url=self.endpoint_url or None, config=config)

    def get_client(self) -> SesEmailClient:
        """An SES sender; botocore does not retry sends (a retried send may deliver twice)."""
        client = self._client("sesv2", attempts=1)  # one attempt: no hidden resend
        return SesEmailClient(
            client,
            from_address=self.from_address,
            from_name=self.from_name,
            configuration_set=self.configuration_set or None,
        )


    def get_mailbox(self) -> S3Mailbox:
        """A reader of the emails SES received into S3 (same account and credentials; `endpoint_url` for tests)."""
        return S3Mailbox(self._client("s3", attempts=3))  # reading is safe to retry


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() or None if value is not None else None
