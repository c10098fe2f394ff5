"""`POST /alerts` (a signed usage alert) and `GET /alerts/{event_id}` (what became of it)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from webhook.deps import DispatcherDep, SettingsDep, SignedBody, check_signature
from webhook.models import AlertAnswer, AlertPayload, AlertStatus, ErrorAnswer, Refused, non_finite_path

router = APIRouter()

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorAnswer} for code in (400, 401, 413, 415, 422)}


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


@router.post(
    "/alerts",
    response_model=AlertAnswer,
    response_model_exclude_none=True,
    status_code=202,
    responses={200: {"model": AlertAnswer, "description": "Not triggered, or a repeat"}, **ERRORS},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": AlertPayload.model_json_schema()}}}},
    summary="Receive a usage alert",
)
async def post_alert(body: SignedBody, dispatcher: DispatcherDep) -> JSONResponse:
    """Signed with `X-Upsell-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`. 202 when an upsell
    starts (or the alert is spooled), 200 when it does not or the event id was seen before."""
    alert = parse_alert(body)
    status_code, answer = await dispatcher.accept(alert)
    return JSONResponse(answer.model_dump(exclude_none=True), status_code=status_code)


@router.get("/alerts/{event_id}", response_model=AlertStatus, response_model_exclude_none=True,
            responses={404: {"model": ErrorAnswer}, 401: {"model": ErrorAnswer}})
async def get_alert(event_id: str, request: Request, dispatcher: DispatcherDep, settings: SettingsDep) -> AlertStatus:
    """What became of an alert. Signed like an alert, the signed text being `<t>.<request path>`."""
    check_signature(request, settings, request.url.path.encode())
    status = await dispatcher.status(event_id)
    if status is None:
        raise Refused(404, "not_found", f"no alert with event_id {event_id!r}", field="event_id")
    return status
