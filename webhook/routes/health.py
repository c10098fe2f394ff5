"""`GET /healthz`: liveness, signing mode, spool depth and whether the Prefect API answers."""

from __future__ import annotations

from fastapi import APIRouter

from webhook.deps import GatewayDep, SettingsDep, StoreDep
from webhook.models import Health
from webhook.settings import INSECURE_WARNING

router = APIRouter()


@router.get("/healthz", response_model=Health, response_model_exclude_none=True)
async def healthz(settings: SettingsDep, store: StoreDep, gateway: GatewayDep) -> Health:
    """Liveness, signing mode, spool depth and whether the Prefect API answers."""
    return Health(
        signing="required" if settings.signing_required else "disabled",
        warning=None if settings.signing_required else INSECURE_WARNING,
        spool_depth=store.spool_depth(),
        prefect_api="down" if gateway.api_down else "up",
        prefect_api_url=gateway.api_url,
    )
