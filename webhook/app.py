"""The receiver: signed usage alerts in, upsell flow runs out; reply, approval and unsubscribe links.

Built by `create_app(settings)`. `uvicorn webhook.app:app` works too: the module attribute `app` is built on
first access (module `__getattr__`) from the environment, so importing this module reads no settings.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import parse_qs
from uuid import UUID

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL
from pydantic import ValidationError

from deployments.api import WAIT_INPUTS, NotWaitingError, UpsellRequestError, resume_wait, validate_wait_input
from tasks.runtime.links import InvalidToken, LinkToken, verify_token
from webhook.dispatcher import AlertDispatcher, PrefectUnavailable
from webhook.models import AlertAnswer, AlertPayload, AlertStatus, ErrorAnswer, Health, non_finite_path
from webhook.pages import confirm_form, describe, page
from webhook.settings import ReceiverSettings
from webhook.signing import SIGNATURE_HEADER, SignatureError, verify_signature
from webhook.store import ReceiverStore

logger = logging.getLogger("upsell.receiver")
INSECURE_WARNING = "signature checks are OFF (UPSELL_WEBHOOK_INSECURE_DEV=true): development only"


class Refused(Exception):
    """A request refused with a JSON error naming the offending field."""

    def __init__(self, status_code: int, error: str, detail: str, field: str | None = None,
                 errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.answer = ErrorAnswer(error=error, field=field, detail=detail, errors=errors or [])


# ---- dependencies (each overridable with app.dependency_overrides) ----


def get_settings(request: Request) -> ReceiverSettings:
    return request.app.state.settings


def get_store(request: Request) -> ReceiverStore:
    return request.app.state.store


def get_dispatcher(request: Request) -> AlertDispatcher:
    return request.app.state.dispatcher


SettingsDep = Annotated[ReceiverSettings, Depends(get_settings)]
StoreDep = Annotated[ReceiverStore, Depends(get_store)]
DispatcherDep = Annotated[AlertDispatcher, Depends(get_dispatcher)]


async def read_signed_body(request: Request, settings: SettingsDep) -> bytes:
    """The raw body of an alert: JSON content type, at most `max_body_bytes`, signed with an active secret."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise Refused(415, "unsupported_media_type", f"content-type must be application/json, got "
                      f"{content_type or 'none'!r}", field="content-type")
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise Refused(413, "body_too_large", f"body is {declared} bytes; the limit is {limit}", field="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, "body_too_large", f"body exceeds the {limit}-byte limit", field="body")
        chunks.append(chunk)
    body = b"".join(chunks)
    check_signature(request, settings, body)
    return body


def check_signature(request: Request, settings: ReceiverSettings, signed: bytes) -> None:
    if not settings.signing_required:
        return
    try:
        verify_signature(request.headers.get(SIGNATURE_HEADER), signed, settings.secret_values(),
                         settings.webhook_tolerance_s)
    except SignatureError as exc:
        raise Refused(401, "invalid_signature", str(exc), field=SIGNATURE_HEADER) from None


def parse_alert(body: bytes) -> AlertPayload:
    """Validate the alert strictly; the first error names its field (NaN/Infinity refused anywhere)."""
    try:
        alert = AlertPayload.model_validate_json(body)
    except ValidationError as exc:
        errors = [
            # an unknown field may be named "": only an error without a location is about the whole body
            {"field": ".".join(str(p) for p in e["loc"]) if e["loc"] else "body", "type": e["type"],
             "detail": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        first = errors[0]
        malformed = first["type"] in ("json_invalid", "json_type", "string_unicode", "model_type")
        code = "malformed_json" if malformed else "invalid_field"
        detail = f"{first['field']}: {first['detail']}"
        raise Refused(400 if malformed else 422, code, detail, field=first["field"], errors=errors) from None
    bad = non_finite_path(alert.context, "context")
    if bad:
        raise Refused(422, "invalid_field", f"{bad}: NaN and Infinity are not valid JSON numbers", field=bad)
    return alert


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


#: A token as `sign_token` spells it: base64url payload, one dot, base64url MAC, no padding.
_TOKEN_SPELLING = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def canonical_token(token: str) -> bool:
    """Whether the token is spelled exactly as `sign_token` writes it.

    `verify_token` decodes the MAC leniently (padding, characters outside base64url and the unused low bits of
    the last character are ignored), so one signed link has many spellings, and each spelling has its own
    used-link key: without this check, "token=" or "token!!!!" used a link a second time.
    """
    if not _TOKEN_SPELLING.fullmatch(token):
        return False
    mac = token.split(".", 1)[1]
    try:
        raw = base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4))
    except ValueError:
        return False
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == mac


def _is_uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return False
    return True


def _altered() -> Response:
    return page("This link is not valid", "The link is incomplete or was altered. Nothing was changed.", 403)


def open_link(token: str, settings: ReceiverSettings, *, unsubscribe: bool) -> LinkToken | Response:
    """The verified token, or the page that says why it cannot be used (403 forged, 410 expired)."""
    if not canonical_token(token):
        return _altered()
    try:
        link = verify_token(token, settings.link_secret.get_secret_value())
    except InvalidToken as exc:
        if exc.expired:
            return page("This link has expired", "Links in our emails and messages expire. Nothing was changed.",
                        410)
        return _altered()
    except RecursionError:  # correctly signed JSON nested deeper than the json module parses: not a link we made
        return _altered()
    if unsubscribe != (link.wait == "unsubscribe") or (not unsubscribe and link.wait not in WAIT_INPUTS):
        return page("This link is not valid", "This link does not belong here. Nothing was changed.", 403)
    if not unsubscribe and not _is_uuid(link.flow_run_id):  # a reply/approval link answers one flow run
        return page("This link is not valid", "The link names no request. Nothing was changed.", 403)
    return link


#: How long a one-click unsubscribe waits to be applied before the answer (it is recorded durably first).
UNSUBSCRIBE_APPLY_S = 2.0


def used_page() -> Response:
    return page("This link was already used", "Your answer was recorded the first time. Nothing was changed.", 410)


# ---- the app ----


def create_app(settings: ReceiverSettings) -> FastAPI:
    """The receiver app; its store, Prefect client and spool dispatcher live in the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.signing_required:
            logger.warning("Receiver: %s", INSECURE_WARNING)
        api_url = settings.prefect_api_url or PREFECT_API_URL.value()
        if not api_url:
            raise RuntimeError("no Prefect API: set PREFECT_API_URL (or UPSELL_PREFECT_API_URL)")
        store = ReceiverStore(settings.receiver_db_path)
        client = PrefectClient(api=api_url, httpx_settings={"timeout": httpx.Timeout(settings.prefect_timeout_s)})
        async with client:
            dispatcher = AlertDispatcher(settings, store, client)
            app.state.store, app.state.dispatcher, app.state.api_url = store, dispatcher, api_url
            requeued = store.requeue_received()  # alerts an earlier process accepted but never decided
            if requeued:
                logger.warning("Receiver: %d alert(s) left undecided by the last process; replaying", requeued)
            replay = asyncio.create_task(dispatcher.run_forever(), name="upsell-spool-dispatcher")
            if store.spool_depth():
                logger.info("Receiver: %d spooled alert(s) from before the restart", store.spool_depth())
                dispatcher.wake()
            try:
                yield
            finally:
                replay.cancel()
                await asyncio.gather(replay, return_exceptions=True)
        store.close()

    app = FastAPI(
        title="Upsell receiver",
        description="Signed usage alerts become upsell flow runs (once per event id); reply, approval and "
        "one-click unsubscribe links resume or stop them.",
        version="1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse(exc.answer.model_dump(exclude_none=True), status_code=exc.status_code)

    errors: dict[int | str, dict[str, Any]] = {code: {"model": ErrorAnswer} for code in (400, 401, 413, 415, 422)}

    @app.post(
        "/alerts",
        response_model=AlertAnswer,
        response_model_exclude_none=True,
        status_code=202,
        responses={200: {"model": AlertAnswer, "description": "Not triggered, or a repeat"}, **errors},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": AlertPayload.model_json_schema()}}}},
        summary="Receive a usage alert",
    )
    async def post_alert(
        body: Annotated[bytes, Depends(read_signed_body)], dispatcher: DispatcherDep
    ) -> JSONResponse:
        """Signed with `X-Upsell-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`. 202 when an upsell
        starts (or the alert is spooled), 200 when it does not or the event id was seen before."""
        alert = parse_alert(body)
        status_code, answer = await dispatcher.accept(alert)
        return JSONResponse(answer.model_dump(exclude_none=True), status_code=status_code)

    @app.get("/alerts/{event_id}", response_model=AlertStatus, response_model_exclude_none=True,
             responses={404: {"model": ErrorAnswer}, 401: {"model": ErrorAnswer}})
    async def get_alert(event_id: str, request: Request, dispatcher: DispatcherDep,
                        settings: SettingsDep) -> AlertStatus:
        """What became of an alert. Signed like an alert, the signed text being `<t>.<request path>`."""
        check_signature(request, settings, request.url.path.encode())
        status = await dispatcher.status(event_id)
        if status is None:
            raise Refused(404, "not_found", f"no alert with event_id {event_id!r}", field="event_id")
        return status

    @app.get("/healthz", response_model=Health, response_model_exclude_none=True)
    async def healthz(request: Request, store: StoreDep, dispatcher: DispatcherDep) -> Health:
        """Liveness, signing mode, spool depth and whether the Prefect API answers."""
        return Health(
            signing="required" if settings.signing_required else "disabled",
            warning=None if settings.signing_required else INSECURE_WARNING,
            spool_depth=store.spool_depth(),
            prefect_api="down" if dispatcher.api_down else "up",
            prefect_api_url=request.app.state.api_url,
        )

    @app.get("/links/{token}", response_class=Response, summary="Confirmation page of a reply/approval link")
    async def show_link(token: str, settings: SettingsDep, store: StoreDep) -> Response:
        """Shows what the link will do; changes nothing (mail scanners prefetch links)."""
        link = open_link(token, settings, unsubscribe=False)
        if isinstance(link, Response):
            return link
        if store.link_used(token_hash(token)):
            return used_page()
        title, question, label = describe(link.wait, link.value)
        return page(title, question, form=confirm_form(label))

    @app.post("/links/{token}", response_class=Response, summary="Answer a wait with the link's value")
    async def use_link(token: str, settings: SettingsDep, store: StoreDep, dispatcher: DispatcherDep) -> Response:
        """Resumes the run once: the token is marked used (unique key) before the resume is attempted."""
        link = open_link(token, settings, unsubscribe=False)
        if isinstance(link, Response):
            return link
        try:
            run_input = validate_wait_input(link.wait, link.value)
        except UpsellRequestError:
            return page("This link is not valid", "The link carries an answer we cannot use.", 403)
        digest = token_hash(token)
        if not store.claim_link(digest, link.flow_run_id, link.wait):
            return used_page()
        try:
            await dispatcher.call(lambda: resume_wait(dispatcher.client, link.flow_run_id, link.wait, run_input))
        except NotWaitingError:
            store.release_link(digest)  # nothing was resumed: the link may still be valid later
            return page("Nothing to answer right now",
                        "This request is not waiting for this answer (it was already answered, or is not "
                        "ready yet). Nothing was changed.", 409)
        except ObjectNotFound:
            return page("This request no longer exists", "Nothing was changed.", 410)
        except PrefectUnavailable:
            store.release_link(digest)
            return page("Please try again shortly", "We could not record your answer just now. Nothing was "
                        "changed; the link still works.", 503)
        return page("Thank you", "Your answer was recorded.")

    @app.get("/unsubscribe/{token}", response_class=Response, summary="Unsubscribe confirmation page")
    async def show_unsubscribe(token: str, settings: SettingsDep) -> Response:
        """Asks for confirmation; changes nothing (RFC 8058 clients POST instead)."""
        link = open_link(token, settings, unsubscribe=True)
        if isinstance(link, Response):
            return link
        title, question, label = describe(link.wait, link.value)
        return page(title, question, form=confirm_form(label, {"List-Unsubscribe": "One-Click"}))

    @app.post("/unsubscribe/{token}", response_class=Response, summary="RFC 8058 one-click unsubscribe")
    async def unsubscribe(token: str, request_body: Annotated[bytes, Depends(_form_body)], settings: SettingsDep,
                          store: StoreDep, dispatcher: DispatcherDep) -> Response:
        """With body `List-Unsubscribe=One-Click`: the contact gets no more upsell emails.

        The token is checked before anything else; the unsubscribe is then recorded in the receiver's own
        file (so it is kept even while Prefect or the store is down) and applied to the suppression list at
        once, or by a later dispatcher round as soon as Prefect and the store answer again.
        """
        link = open_link(token, settings, unsubscribe=True)
        if isinstance(link, Response):
            return link
        form = parse_qs(request_body.decode("utf-8", "replace"))
        if form.get("List-Unsubscribe") != ["One-Click"]:
            return page("Unsubscribe", "The request must carry List-Unsubscribe=One-Click. Nothing was changed.",
                        400)
        email = str(link.value.get("email", "")).strip()
        if not email:
            return page("This link is not valid", "The link names no address. Nothing was changed.", 403)
        store.record_unsubscribe(hashlib.sha256(token.encode()).hexdigest(), email, link.flow_run_id)
        # applied now when Prefect and the store answer within a moment; otherwise by a later dispatcher round
        applied = await dispatcher.apply_unsubscribes(timeout_s=UNSUBSCRIBE_APPLY_S)
        logger.info("Unsubscribe of %s recorded (flow run %s)%s", email, link.flow_run_id,
                    "" if applied else "; it will be applied when Prefect and the store answer")
        return page("You are unsubscribed", f"{email} will receive no more of these emails.")

    return app


async def _form_body(request: Request) -> bytes:
    body = await request.body()
    return body[:4096]


_lazy_app: FastAPI | None = None


def __getattr__(name: str) -> Any:
    """`webhook.app:app` for `uvicorn webhook.app:app`, built from the environment on first access."""
    global _lazy_app
    if name == "app":
        if _lazy_app is None:
            _lazy_app = create_app(ReceiverSettings())
        return _lazy_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

