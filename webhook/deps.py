"""The receiver's dependencies, as `Annotated` aliases; each can be replaced with `app.dependency_overrides`."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request

from blocks.interfaces import OpportunityStore
from tasks.runtime.signing import SIGNATURE_HEADER
from webhook.dispatcher import AlertDispatcher
from webhook.gateway import PrefectGateway, resolve_via_api
from webhook.models import Refused
from webhook.settings import ReceiverSettings
from webhook.signing import SignatureError, verify_signature
from webhook.sns import SnsVerifier
from webhook.spool import Spool
from webhook.store import ReceiverStore

logger = logging.getLogger("upsell.receiver")

#: The protection space of the funnel report, named in its WWW-Authenticate challenges.
REPORT_REALM = "upsell-report"


def get_settings(request: Request) -> ReceiverSettings:
    return request.app.state.settings


def get_store(request: Request) -> ReceiverStore:
    return request.app.state.store


def get_gateway(request: Request) -> PrefectGateway:
    return request.app.state.gateway


def get_spool(request: Request) -> Spool:
    return request.app.state.spool


def get_dispatcher(request: Request) -> AlertDispatcher:
    return request.app.state.dispatcher


SettingsDep = Annotated[ReceiverSettings, Depends(get_settings)]
StoreDep = Annotated[ReceiverStore, Depends(get_store)]
GatewayDep = Annotated[PrefectGateway, Depends(get_gateway)]
SpoolDep = Annotated[Spool, Depends(get_spool)]
DispatcherDep = Annotated[AlertDispatcher, Depends(get_dispatcher)]


def check_signature(request: Request, settings: ReceiverSettings, signed: bytes) -> None:
    """Refuse (401) unless `X-Upsell-Signature` signs `signed` with an active secret (when signing is on)."""
    if not settings.signing_required:
        return
    try:
        verify_signature(request.headers.get(SIGNATURE_HEADER), signed, settings.secret_values(),
                         settings.webhook_tolerance_s)
    except SignatureError as exc:
        raise Refused(401, "invalid_signature", str(exc), field=SIGNATURE_HEADER) from None


async def read_signed_body(request: Request, settings: SettingsDep) -> bytes:
    """The raw body of an alert: JSON content type, at most `max_body_bytes`, signed with an active secret."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise Refused(415, "unsupported_media_type", f"content-type must be application/json, got "
                      f"{content_type or 'none'!r}", field="content-type")
    body = await request.body()  # at most max_body_bytes: BodyLimit answered 413 past it
    check_signature(request, settings, body)
    return body


async def read_form_body(request: Request) -> bytes:
    """A form body (an unsubscribe confirmation): at most MAX_OTHER_BODY_BYTES, BodyLimit answered 413 past it."""
    return await request.body()


SignedBody = Annotated[bytes, Depends(read_signed_body)]
FormBody = Annotated[bytes, Depends(read_form_body)]


# ---- inbound Amazon SNS messages ----

#: The content types SNS posts with (text/plain; charset=UTF-8), and JSON.
SNS_CONTENT_TYPES = ("text/plain", "application/json")


async def get_sns_verifier(request: Request) -> SnsVerifier:
    """The app's SNS verifier, built on first use (it keeps the signing certificates it fetched). An async
    dependency: it runs on the event loop, so two requests never build two."""
    verifier: SnsVerifier | None = getattr(request.app.state, "sns_verifier", None)
    if verifier is None:
        verifier = request.app.state.sns_verifier = SnsVerifier(request.app.state.settings)
    return verifier


async def read_sns_body(request: Request, settings: SettingsDep) -> bytes:
    """The raw body of an SNS message: 404 while no topic is configured, then a text/plain (or JSON) body of at
    most `sns_max_body_bytes`."""
    if not settings.sns_topic_arns:
        raise Refused(404, "inbound_not_enabled", "Inbound SNS messages are not enabled on this receiver: set "
                      "UPSELL_SNS_TOPIC_ARNS to the topics it subscribes to.")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in SNS_CONTENT_TYPES:
        raise Refused(415, "unsupported_media_type", f"content-type must be text/plain (as SNS posts), got "
                      f"{content_type or 'none'!r}", field="content-type")
    return await request.body()  # at most sns_max_body_bytes: BodyLimit answered 413 past it


SnsVerifierDep = Annotated[SnsVerifier, Depends(get_sns_verifier)]
SnsBody = Annotated[bytes, Depends(read_sns_body)]


# ---- the funnel report: its credentials and the opportunity store it reads ----


def _same(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode(), expected.encode())


def report_credentials_valid(authorization: str, settings: ReceiverSettings) -> bool:
    """Whether an Authorization header carries the report's bearer token or its basic user name and password."""
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and settings.report_token is not None:
        return _same(credentials, settings.report_token.get_secret_value())
    if scheme.lower() == "basic" and settings.report_user is not None and settings.report_password is not None:
        try:
            user, colon, password = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        # both compared every time: how long the answer takes does not tell which of the two was wrong
        user_ok = _same(user, settings.report_user)
        password_ok = _same(password, settings.report_password.get_secret_value())
        return bool(colon) and user_ok and password_ok
    return False


def report_challenge(settings: ReceiverSettings) -> str:
    """The WWW-Authenticate challenges of the schemes configured (basic first: a browser then asks for a login)."""
    schemes = [f'Basic realm="{REPORT_REALM}", charset="UTF-8"'] if settings.report_user is not None else []
    schemes += [f'Bearer realm="{REPORT_REALM}"'] if settings.report_token is not None else []
    return ", ".join(schemes)


#: Clients whose failed logins are remembered at most (the oldest is forgotten first): a flood of addresses
#: cannot grow the receiver's memory without bound.
LOGIN_CLIENTS_KEPT = 10_000


class LoginFailures:
    """Failed logins with the report's credentials, per client address, in the receiver's memory: a client with
    `limit` failures in the last `window_s` seconds is refused (429) until the oldest of them is that old."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit, self.window_s = limit, window_s
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str) -> int:
        """Seconds until `client` may try again; 0 when it may now."""
        failures = self._failures.get(client)
        if failures is None:
            return 0
        now = time.monotonic()
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return 0
        return math.ceil(failures[0] + self.window_s - now) if len(failures) >= self.limit else 0

    def failed(self, client: str) -> None:
        failures = self._failures.pop(client, None) or deque(maxlen=self.limit)
        failures.append(time.monotonic())
        self._failures[client] = failures  # last in the dict: the most recently failing client
        if len(self._failures) > LOGIN_CLIENTS_KEPT:
            del self._failures[next(iter(self._failures))]


def login_failures(request: Request) -> LoginFailures:
    """The app's failed-login record (one per receiver process), made on first use; async-free and lock-free: it
    runs on the event loop only."""
    failures: LoginFailures | None = getattr(request.app.state, "login_failures", None)
    if failures is None:
        settings: ReceiverSettings = request.app.state.settings
        failures = request.app.state.login_failures = LoginFailures(settings.report_login_failures,
                                                                    settings.report_login_window_s)
    return failures


def check_report_login(request: Request, settings: ReceiverSettings) -> None:
    """Refuse a client that failed too often (429, credentials not even compared), or whose Authorization header
    carries neither the report's bearer token nor its user name and password (401, counted as a failure)."""
    failures = login_failures(request)
    client = request.client.host if request.client else "unknown"
    wait_s = failures.retry_after(client)
    if wait_s:
        raise Refused(429, "too_many_failed_logins", f"Too many failed logins from this address: try again in "
                      f"{wait_s} s.", field="authorization", headers={"Retry-After": str(wait_s)})
    if not report_credentials_valid(request.headers.get("authorization", ""), settings):
        failures.failed(client)
        logger.warning("Report login failed from %s", client)
        raise Refused(401, "unauthorized", "The funnel report needs the report's bearer token or its user name "
                      "and password.", field="authorization", headers={"WWW-Authenticate": report_challenge(settings)})


def require_report_access(request: Request, settings: SettingsDep) -> None:
    """Refuse the report: 404 when no credentials are configured (it is never public), 429 after too many failed
    logins, 401 without valid credentials."""
    if not settings.report_enabled:
        raise Refused(404, "report_not_enabled", "The funnel report is not enabled on this receiver: set "
                      "UPSELL_REPORT_TOKEN, or UPSELL_REPORT_USER and UPSELL_REPORT_PASSWORD, to serve it.")
    check_report_login(request, settings)


# ---- the report's sign-in from a browser: a form for the token, answered with a signed session cookie ----

#: The cookie that carries a signed-in browser's session of the report (sent to /report only).
REPORT_COOKIE = "upsell_report_session"
#: How long a sign-in lasts.
REPORT_SESSION_S = 8 * 3600


def wants_page(request: Request) -> bool:
    """Whether the client is a browser (it asks for HTML): it is answered with a sign-in page, not a JSON error."""
    return "text/html" in request.headers.get("accept", "").lower()


def _session_mac(settings: ReceiverSettings, expires: int) -> str:
    """The HMAC of a session's expiry, keyed with the report's token: a new token ends every session."""
    token = settings.report_token.get_secret_value() if settings.report_token is not None else ""
    return hmac.new(token.encode(), f"upsell-report-session|{expires}".encode(), hashlib.sha256).hexdigest()


def new_session(settings: ReceiverSettings, now: float | None = None) -> str:
    """A session cookie's value: its expiry and the HMAC of it (nothing secret in it, nothing to forge)."""
    expires = int((time.time() if now is None else now) + REPORT_SESSION_S)
    return f"{expires}.{_session_mac(settings, expires)}"


def session_valid(value: str | None, settings: ReceiverSettings) -> bool:
    """Whether a session cookie was signed with the report's token and has not expired."""
    if not value or settings.report_token is None:
        return False
    expires, _, mac = value.partition(".")
    if not expires.isdigit() or int(expires) <= time.time():
        return False
    return _same(mac, _session_mac(settings, int(expires)))


def too_many_failures(request: Request) -> int:
    """Seconds the client must wait after too many failed logins (0: it may try)."""
    return login_failures(request).retry_after(request.client.host if request.client else "unknown")


def failed_login(request: Request) -> None:
    client = request.client.host if request.client else "unknown"
    login_failures(request).failed(client)
    logger.warning("Report login failed from %s", client)


def report_access(request: Request, settings: ReceiverSettings) -> bool:
    """True when the request may see the report (a signed-in browser's cookie, or the Authorization header's
    credentials); False for a browser that sent none (it is shown the sign-in page, not counted as a failure).
    Otherwise refused as `require_report_access` refuses: 404, 429 or 401."""
    if not settings.report_enabled:
        require_report_access(request, settings)
    if session_valid(request.cookies.get(REPORT_COOKIE), settings):
        return True
    if "authorization" not in request.headers and wants_page(request):
        return False
    try:
        check_report_login(request, settings)
    except Refused as refused:  # wrong credentials from a browser: counted, and the sign-in page again
        if refused.status_code == 401 and wants_page(request):
            return False
        raise
    return True


def get_opportunity_store(settings: SettingsDep, gateway: GatewayDep) -> Iterator[OpportunityStore]:
    """The opportunity store (the saved block's, found through the receiver's Prefect API, or the local stand-in),
    closed after the request; 503 while Prefect or the store cannot be reached."""
    if gateway.api_down:
        raise Refused(503, "prefect_unavailable", "The Prefect API does not answer: the opportunity store, found "
                      "through it, cannot be read now. Try again later.")
    try:
        store = resolve_via_api("store", settings)
    except Exception as exc:  # answered as unavailable on purpose: the page cannot be drawn without the store
        logger.warning("Funnel report: the opportunity store could not be found (%s: %s)", type(exc).__name__, exc)
        raise Refused(503, "store_unavailable", "The opportunity store could not be reached. Try again later.") from exc
    try:
        yield store
    finally:
        store.close()


OpportunityStoreDep = Annotated[OpportunityStore, Depends(get_opportunity_store)]
