"""`GET /healthz`: up or down for anyone; signing mode, spool depth and the Prefect API for the report's
credentials (the Prefect API's address is internal)."""

from __future__ import annotations

import logging
import sqlite3

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from webhook.deps import GatewayDep, SettingsDep, StoreDep, check_report_login
from webhook.models import ErrorAnswer, Health, HealthStatus
from webhook.settings import INSECURE_WARNING

logger = logging.getLogger("upsell.receiver")
router = APIRouter()


@router.get("/healthz", response_model=Health | HealthStatus, response_model_exclude_none=True,
            responses={401: {"model": ErrorAnswer}, 429: {"model": ErrorAnswer},
                       503: {"model": HealthStatus, "description": "Down: the receiver's own file cannot be read"}})
async def healthz(request: Request, settings: SettingsDep, store: StoreDep, gateway: GatewayDep) -> JSONResponse:
    """`{"status": "up"}` (200) while the receiver keeps alerts, also while the Prefect API is away (they are
    spooled); `{"status": "down"}` (503) when its own file cannot be read. With the report's credentials in
    Authorization (when configured): the signing mode, spool depth and the Prefect API's state and address too."""
    try:
        depth = store.spool_depth()
    except sqlite3.Error as exc:
        logger.error("Health: the receiver's file cannot be read (%s: %s)", type(exc).__name__, exc)
        return JSONResponse(HealthStatus(status="down").model_dump(), status_code=503)
    if not request.headers.get("authorization") or not settings.report_enabled:
        return JSONResponse(HealthStatus(status="up").model_dump())
    check_report_login(request, settings)
    health = Health(
        status="up",
        signing="required" if settings.signing_required else "disabled",
        warning=None if settings.signing_required else INSECURE_WARNING,
        spool_depth=depth,
        prefect_api="down" if gateway.api_down else "up",
        prefect_api_url=gateway.api_url,
    )
    return JSONResponse(health.model_dump(exclude_none=True))
