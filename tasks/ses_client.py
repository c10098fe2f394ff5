"""Email through Amazon SES (API v2 `SendEmail` with raw content), behind the `EmailSender` interface."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ConnectionClosedError, ReadTimeoutError

from flows.models import EmailDraft
from tasks.email_message import build_message
from tasks.interfaces import SendOutcomeUnknown
from tasks.outbox import WIRE_POLICY
from tasks.ratelimits import acquire_rate_limit

#: Header carrying our idempotency key, so a duplicate found in the mailbox can be traced to its event.
IDEMPOTENCY_HEADER = "X-Upsell-Idempotency-Key"


class SesEmailClient:
    """Sends the upsell email as one raw MIME message (text + HTML parts, List-Unsubscribe headers).

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

    def send(self, draft: EmailDraft, *, idempotency_key: str) -> str:
        message = build_message(draft, from_address=self.from_address, from_name=self.from_name)
        message[IDEMPOTENCY_HEADER] = idempotency_key
        request: dict[str, Any] = {
            "FromEmailAddress": str(message["From"]),
            "Destination": {"ToAddresses": [draft.to]},
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

    def close(self) -> None:
        self.client.close()
