"""`/docs` (Swagger UI) and `/redoc` (ReDoc), working without internet: the viewers' files are served by the
receiver itself (`fastapi_offline` bundles them; `create_app` mounts them at `DOCS_ASSETS`), not by a CDN."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from webhook.security import CSP, docs_policy

#: Where `FastAPIOffline` serves the bundled Swagger UI and ReDoc files.
DOCS_ASSETS = "/static-offline-docs"

router = APIRouter(include_in_schema=False)


def with_docs_policy(page: HTMLResponse) -> HTMLResponse:
    """The page with a Content-Security-Policy allowing its own inline start-up script and nothing from outside."""
    page.headers[CSP] = docs_policy(bytes(page.body).decode())
    return page


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI on the receiver's own copy of its files."""
    app, root = request.app, request.scope.get("root_path", "")
    assets = f"{root}{DOCS_ASSETS}"
    return with_docs_policy(get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - API",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon.png",
        swagger_ui_parameters=app.swagger_ui_parameters,
    ))


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc on the receiver's own copy of its file (no web fonts: they would come from Google)."""
    app, root = request.app, request.scope.get("root_path", "")
    assets = f"{root}{DOCS_ASSETS}"
    return with_docs_policy(get_redoc_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - API reference",
        redoc_js_url=f"{assets}/redoc.standalone.js",
        redoc_favicon_url=f"{assets}/favicon.png",
        with_google_fonts=False,
    ))
