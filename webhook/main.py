"""The receiver: signed usage alerts in, upsell flow runs out; reply, approval and unsubscribe links.

Built by `create_app(settings)`. `uvicorn webhook.main:app` works too: the module attribute `app` is built on
first access (module `__getattr__`) from the environment, so importing this module reads no settings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from prefect.client.orchestration import PrefectClient
from prefect.settings import PREFECT_API_URL

from flows.playbooks import load_playbooks
from webhook.dispatcher import AlertDispatcher
from webhook.gateway import PrefectGateway
from webhook.inbound import InboundWorker
from webhook.models import Refused
from webhook.routes import alerts, docs, health, inbound, links, report
from webhook.security import BodyLimit, SecurityHeaders
from webhook.settings import INSECURE_WARNING, ReceiverSettings
from webhook.spool import Spool
from webhook.store import ReceiverStore

logger = logging.getLogger("upsell.receiver")


@asynccontextmanager
async def running(app: FastAPI, settings: ReceiverSettings) -> AsyncIterator[None]:
    """The app's lifespan: its store, Prefect client, gateway, dispatcher and spool worker (on `app.state`)."""
    if not settings.signing_required:
        logger.warning("Receiver: %s", INSECURE_WARNING)
    api_url = settings.prefect_api_url or PREFECT_API_URL.value()
    if not api_url:
        raise RuntimeError("no Prefect API: set PREFECT_API_URL (or UPSELL_PREFECT_API_URL)")
    store = ReceiverStore(settings.receiver_db_path)
    client = PrefectClient(api=api_url, httpx_settings={"timeout": httpx.Timeout(settings.prefect_timeout_s)})
    async with client:
        gateway = PrefectGateway(settings, client, api_url)
        spool = Spool(settings, store, gateway)
        dispatcher = AlertDispatcher(settings, store, gateway, spool, app.state.playbooks)
        app.state.store, app.state.gateway, app.state.spool, app.state.dispatcher = store, gateway, spool, dispatcher
        worker = spool.start(partial(dispatcher.decide, from_spool=True))
        inbound = InboundWorker(settings, store, gateway)
        app.state.inbound_wake = inbound.wake
        workers = [worker, inbound.start()]
        try:
            yield
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    store.close()


async def refused(request: Request, exc: Refused) -> JSONResponse:
    """A `Refused` request: its JSON error, with its status code and headers."""
    return JSONResponse(exc.answer.model_dump(exclude_none=True), status_code=exc.status_code, headers=exc.headers)


def create_app(settings: ReceiverSettings) -> FastAPI:
    """The receiver app; its store, Prefect client and spool worker live in the lifespan."""

    def lifespan(app: FastAPI) -> AbstractAsyncContextManager[None]:
        return running(app, settings)

    # the docs pages are the `docs` router's (each with its own Content-Security-Policy); FastAPIOffline serves
    # their Swagger UI and ReDoc files from the app, so /docs works without internet
    app = FastAPIOffline(
        docs_url=None,
        redoc_url=None,
        static_url=docs.DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
        title="Upsell receiver",
        description="Signed usage alerts become upsell flow runs (once per event id); reply, approval and "
        "one-click unsubscribe links resume or stop them.",
        version="1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.playbooks = load_playbooks(settings.playbooks_file)  # an invalid file: the receiver does not start
    app.exception_handler(Refused)(refused)
    app.include_router(alerts.router)
    app.include_router(health.router)
    app.include_router(links.router)
    app.include_router(docs.router)
    app.include_router(report.router)
    app.include_router(inbound.router)
    # every body is capped before any route reads or authenticates it; the headers go on every answer, 413s too
    app.add_middleware(BodyLimit, limit_for=settings.body_limit)
    app.add_middleware(SecurityHeaders, https=settings.public_base_url.startswith("https://"))
    return app


_lazy_app: FastAPI | None = None


def __getattr__(name: str) -> Any:
    """`webhook.main:app` for `uvicorn webhook.main:app`, built from the environment on first access."""
    global _lazy_app
    if name == "app":
        if _lazy_app is None:
            _lazy_app = create_app(ReceiverSettings())
        return _lazy_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
