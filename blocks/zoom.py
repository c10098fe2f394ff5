"""Block for Zoom, where follow-up meetings are booked."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from blocks.interfaces import SendOutcomeUnknown
from blocks.limits import RetryAfter, VendorRateLimited, cap_request_timeout, retry_after, retry_after_seconds
from blocks.local import append_record
from flows.models import Meeting

logger = logging.getLogger(__name__)

RATE_LIMIT = "upsell-zoom"
#: Refresh a token this long before Zoom says it expires (clock skew, request time).
EXPIRY_MARGIN_S = 60.0


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float  # time.monotonic()


# Tokens live for an hour and Zoom limits token requests, so they are shared by every ZoomClient in the process
# (each task run builds a new client from the block), keyed by the OAuth app and account they belong to.
_TOKENS: dict[tuple[str, str, str], _Token] = {}
_TOKENS_LOCK = threading.Lock()


class ZoomRateLimited(VendorRateLimited):
    """Zoom kept answering 429 (or asked for a longer wait than we allow): retry the step later."""


class ZoomClient:
    """Creates Zoom meetings as the Server-to-Server OAuth app's account owner (`users/me`)."""

    def __init__(
        self,
        http: httpx.Client,
        *,
        oauth_base_url: str,
        account_id: str,
        client_id: str,
        client_secret: str,
        duration_min: int = 30,
        max_rate_limit_retries: int = 3,
        max_retry_after_s: float = 30.0,
    ) -> None:
        self.http = http
        self.oauth_base_url = oauth_base_url.rstrip("/")
        self.account_id = account_id
        self.client_id = client_id
        self._client_secret = client_secret
        self.duration_min = duration_min
        self.max_rate_limit_retries = max_rate_limit_retries
        self.max_retry_after_s = max_retry_after_s

    def __repr__(self) -> str:
        return f"ZoomClient(api={str(self.http.base_url)!r}, client_id={self.client_id!r})"

    @property
    def _cache_key(self) -> tuple[str, str, str]:
        return (self.oauth_base_url, self.account_id, self.client_id)

    def access_token(self, *, refresh: bool = False) -> str:
        """A valid access token: the cached one unless it is about to expire or `refresh` is asked for."""
        with _TOKENS_LOCK:
            cached = _TOKENS.get(self._cache_key)
            if cached is not None and not refresh and cached.expires_at > time.monotonic():
                return cached.value
            response = self._send(
                lambda: self.http.post(
                    f"{self.oauth_base_url}/oauth/token",
                    params={"grant_type": "account_credentials", "account_id": self.account_id},
                    auth=(self.client_id, self._client_secret),
                )
            )
            response.raise_for_status()  # 400 invalid_client: wrong credentials, a permanent failure
            data = response.json()
            expires_in = float(data.get("expires_in", 3600))
            token = _Token(data["access_token"], time.monotonic() + max(expires_in - EXPIRY_MARGIN_S, 0.0))
            _TOKENS[self._cache_key] = token
            return token.value

    def create_meeting(self, *, topic: str, start_time: datetime, invitee: str, agenda: str) -> Meeting:
        """Schedule a meeting with the customer invited; returns it with Zoom's join URL."""
        body = {
            "topic": topic[:200],
            "type": 2,  # scheduled
            "start_time": start_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "duration": self.duration_min,
            "timezone": "UTC",
            "agenda": agenda[:2000],
            "settings": {"meeting_invitees": [{"email": invitee}] if invitee else [], "join_before_host": False},
        }
        response = self._post_meeting(body, self.access_token())
        if response.status_code == 401:  # token expired or revoked early: one fresh token, one more try
            logger.info("Zoom answered 401; refreshing the access token")
            response = self._post_meeting(body, self.access_token(refresh=True))
        response.raise_for_status()
        try:
            data = response.json()
            return Meeting(
                meeting_id=str(data["id"]),
                join_url=data["join_url"],
                start_time=datetime.fromisoformat(str(data.get("start_time") or body["start_time"])),
                topic=data.get("topic", topic),
                provider="zoom",
            )
        except (ValueError, KeyError) as exc:
            # Zoom accepted the request (2xx) but the answer is unreadable: the meeting probably exists.
            raise SendOutcomeUnknown(f"Zoom created a meeting but its answer is unreadable: {exc!r}") from exc

    def _post_meeting(self, body: dict[str, object], token: str) -> httpx.Response:
        def send() -> httpx.Response:
            try:
                return self.http.post("/users/me/meetings", json=body, headers={"Authorization": f"Bearer {token}"})
            except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError) as exc:
                # The request may have reached Zoom: never resend it blindly.
                raise SendOutcomeUnknown(f"Zoom meeting request outcome unknown: {exc!r}") from exc

        return self._send(send)

    def _send(self, request: Callable[[], httpx.Response]) -> httpx.Response:
        """Send under the rate limit; on 429 wait Retry-After and try again, a bounded number of times."""

        def attempt() -> httpx.Response | RetryAfter:
            response = request()
            if response.status_code != 429:
                return response
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            return RetryAfter(wait, detail=response.headers.get("X-RateLimit-Type", ""))

        return retry_after(
            attempt,
            rate_limit=RATE_LIMIT,
            max_retries=self.max_rate_limit_retries,
            max_wait_s=self.max_retry_after_s,
            vendor="Zoom",
            gave_up=ZoomRateLimited,
        )


class ZoomCredentials(Block):
    """A Zoom Server-to-Server OAuth app (account id, client id and secret) that books the follow-up meetings."""

    _block_type_name = "Upsell Zoom Credentials"
    _block_type_slug = "upsell-zoom-credentials"
    _description = "Server-to-Server OAuth app (scope meeting:write:meeting:admin) booking follow-up meetings."

    account_id: str = Field(description="Account ID of the Server-to-Server OAuth app.")
    client_id: str = Field(description="Client ID of the app.")
    client_secret: SecretStr = Field(description="Client secret of the app.")
    api_base_url: str = Field(default="https://api.zoom.us/v2", description="Zoom REST API base URL.")
    oauth_base_url: str = Field(default="https://zoom.us", description="Zoom OAuth base URL.")
    meeting_duration_min: int = Field(default=30, ge=5, le=600)
    timeout_s: float = Field(default=30.0, gt=0, description="Timeout of one API request.")
    max_rate_limit_retries: int = Field(default=3, ge=0, le=10, description="Retries of 429 answers.")

    def get_client(self) -> ZoomClient:
        http = httpx.Client(
            base_url=self.api_base_url.rstrip("/"),
            timeout=self.timeout_s,
            headers={"Accept": "application/json", "User-Agent": "upsell/0.1"},
            event_hooks={"request": [cap_request_timeout]},  # each request also ends with the running step's
        )
        return ZoomClient(
            http,
            oauth_base_url=self.oauth_base_url,
            account_id=self.account_id,
            client_id=self.client_id,
            client_secret=self.client_secret.get_secret_value(),
            duration_min=self.meeting_duration_min,
            max_rate_limit_retries=self.max_rate_limit_retries,
        )


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
        append_record(self.path, {**meeting.model_dump(mode="json"), "invitee": invitee, "agenda": agenda})
        return meeting
