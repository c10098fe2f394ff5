"""The receiver's dependencies, as `Annotated` aliases; each can be replaced with `app.dependency_overrides`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tasks.runtime.signing import SIGNATURE_HEADER
from webhook.dispatcher import AlertDispatcher
from webhook.gateway import PrefectGateway
from webhook.models import Refused
from webhook.settings import ReceiverSettings
from webhook.signing import SignatureError, verify_signature
from webhook.spool import Spool
from webhook.store import ReceiverStore

#: The most of a one-click unsubscribe form that is read (its one field is 27 bytes).
FORM_LIMIT = 4096


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


async def read_form_body(request: Request) -> bytes:
    """The start of a form body (an unsubscribe confirmation), at most FORM_LIMIT bytes."""
    body = await request.body()
    return body[:FORM_LIMIT]


SignedBody = Annotated[bytes, Depends(read_signed_body)]
FormBody = Annotated[bytes, Depends(read_form_body)]
