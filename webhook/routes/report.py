"""`GET /report`: the funnel report as a page with its charts, for the people who hold the report's credentials
(a bearer token or a user name and password from the settings; without any configured, it is not served).

A browser without credentials is shown a sign-in page (401): with a user name and password set up, its Basic
challenge makes the browser ask for them; with a token, a form posts it to `POST /report/login`, which answers with
a signed session cookie (HttpOnly, SameSite=Strict, Secure over https) and sends the browser back to the report.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from flows.report import build_report, default_since, start_of
from webhook.deps import (
    REPORT_COOKIE,
    REPORT_SESSION_S,
    FormBody,
    SettingsDep,
    failed_login,
    get_gateway,
    get_opportunity_store,
    get_store,
    new_session,
    report_access,
    report_challenge,
    report_credentials_valid,
    require_report_access,
    too_many_failures,
)
from webhook.models import ErrorAnswer, Refused
from webhook.report_page import report_page, sign_in_page
from webhook.settings import ReceiverSettings

logger = logging.getLogger("upsell.receiver")
router = APIRouter(tags=["report"])

_HTML = {"text/html": {"schema": {"type": "string"}}}
_JSON = {"application/json": {"schema": ErrorAnswer.model_json_schema()}}
_NOT_ENABLED = "No report credentials are configured on this receiver: the report is not served."
REPORT_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"description": "The report page: the funnel, by ISO week, playbook and variant, with its charts.",
          "content": _HTML},
    401: {"description": "No valid credentials. A browser (Accept: text/html) gets the sign-in page; other clients "
          "a JSON error. The WWW-Authenticate header names the schemes configured.", "content": {**_HTML, **_JSON}},
    404: {"description": _NOT_ENABLED, "content": _JSON},
    429: {"description": "Too many failed logins from this address (Retry-After says when to try again).",
          "content": _JSON},
    503: {"description": "Prefect or the opportunity store cannot be reached.", "content": _JSON},
}
LOGIN_ANSWERS: dict[int | str, dict[str, Any]] = {
    303: {"description": "Signed in: a session cookie for /report (8 hours), and back to /report."},
    401: {"description": "Not the report's token: the sign-in page again (a failed login).", "content": _HTML},
    404: {"description": _NOT_ENABLED + " Or no report token is (sign in with the user name and password).",
          "content": _JSON},
    413: {"description": "The form is larger than a sign-in form can be.", "content": _JSON},
    429: {"description": "Too many failed logins from this address: the sign-in page says when to try again.",
          "content": _HTML},
}
LOGIN_FORM = {"requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
    "type": "object", "properties": {"token": {"type": "string", "description": "The report's token."}},
    "required": ["token"]}}}}}


def sign_in(settings: ReceiverSettings, message: str = "", status_code: int = 401,
            headers: dict[str, str] | None = None) -> HTMLResponse:
    """The sign-in page of this receiver's credentials (a 401 carries their challenge)."""
    if status_code == 401:
        headers = {**(headers or {}), "WWW-Authenticate": report_challenge(settings)}
    return sign_in_page(token_form=settings.report_token is not None, basic=settings.report_user is not None,
                        message=message, status_code=status_code, headers=headers)


@router.get("/report", response_class=HTMLResponse, responses=REPORT_ANSWERS, summary="The funnel report (a page)")
def funnel_report(request: Request, settings: SettingsDep, since: date | None = None) -> Response:
    """The funnel from `since` (default: the last 12 ISO weeks): alerts to pipeline, by week, playbook and variant.

    Needs the report's bearer token or its user name and password (Authorization header), or the session cookie of
    a browser signed in through `POST /report/login`."""
    if not report_access(request, settings):
        return sign_in(settings)
    first_day = since or default_since(datetime.now(UTC).date())  # the stores are read once access is granted
    with contextmanager(get_opportunity_store)(settings, get_gateway(request)) as opportunities:
        try:
            logged = opportunities.opportunities_since(start_of(first_day))
        except Exception as exc:  # answered as unavailable on purpose: the store is away, the receiver is fine
            logger.warning("Funnel report: the opportunity store could not be read (%s: %s)", type(exc).__name__,
                           exc)
            raise Refused(503, "store_unavailable", "The opportunity store could not be read. Try again later.") \
                from exc
    report = build_report(get_store(request).alert_events(start_of(first_day)), logged, since=first_day)
    return report_page(report)


@router.post("/report/login", response_class=HTMLResponse, responses=LOGIN_ANSWERS, openapi_extra=LOGIN_FORM,
             summary="Sign in to the funnel report with its token (from the sign-in page)")
async def report_login(request: Request, body: FormBody, settings: SettingsDep) -> Response:
    """Checks the posted token; signed in, the browser gets a session cookie and goes back to /report. Failures
    count toward the failed-login limit, as wrong credentials on /report do."""
    if not settings.report_enabled:
        require_report_access(request, settings)  # 404
    if settings.report_token is None:
        raise Refused(404, "report_login_not_enabled", "No report token is configured: sign in to /report with its "
                      "user name and password.")
    wait_s = too_many_failures(request)
    if wait_s:
        return sign_in(settings, f"Too many failed sign-ins from this address: try again in {wait_s} s.", 429,
                       {"Retry-After": str(wait_s)})
    try:
        token = (parse_qs(body.decode("utf-8", "replace"), max_num_fields=10).get("token") or [""])[0]
    except ValueError:  # more fields than a sign-in form has: not a token
        token = ""
    if not report_credentials_valid(f"Bearer {token}", settings):
        failed_login(request)
        return sign_in(settings, "That is not the report's token.")
    https = request.url.scheme == "https" or settings.public_base_url.startswith("https://")
    response = RedirectResponse("/report", status_code=303)
    response.set_cookie(REPORT_COOKIE, new_session(settings), max_age=REPORT_SESSION_S, path="/report", secure=https,
                        httponly=True, samesite="strict")
    return response
