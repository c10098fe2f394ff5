"""The security headers of every answer of the receiver.

A one-click link page must not be framed by another site (a hidden frame could make the customer press
"Unsubscribe" or a reviewer press "Approve"), a file must not be sniffed into another type, and a page may run
or load nothing but what it was built with. Each HTML page gets a Content-Security-Policy that allows exactly
its own inline blocks (by hash); every other answer gets one that allows nothing at all.
"""

from __future__ import annotations

import base64
import hashlib
import re

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = "Content-Security-Policy"

#: Nothing may be loaded by, framed into or submitted from an answer that brings no policy of its own
#: (JSON, static assets, errors).
DEFAULT_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

#: Headers added to every answer (a page's own value is kept).
ALWAYS = {
    CSP: DEFAULT_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)
_INLINE_STYLE = re.compile(r"<style>(.*?)</style>", re.S)


def source_hashes(pattern: re.Pattern[str], html: str) -> str:
    """The CSP hash sources (`'sha256-…'`) of the page's inline blocks matched by `pattern`."""
    digests = (hashlib.sha256(block.encode()).digest() for block in pattern.findall(html))
    return " ".join(f"'sha256-{base64.b64encode(d).decode()}'" for d in digests)


def page_policy(html: str) -> str:
    """A link page: its own inline style, no script at all, a form that posts only back to the receiver."""
    styles = source_hashes(_INLINE_STYLE, html) or "'none'"
    return f"default-src 'none'; style-src {styles}; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"


def docs_policy(html: str) -> str:
    """The API docs (Swagger UI, ReDoc): the receiver's own assets and the page's inline start-up script.

    Both viewers add style elements at run time (ReDoc builds its stylesheet in the browser), hence inline
    styles; ReDoc runs its search in a worker it creates from a blob.
    """
    scripts = source_hashes(_INLINE_SCRIPT, html)
    return (
        f"default-src 'none'; script-src 'self' {scripts}".rstrip()
        + "; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'"
        "; worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


class SecurityHeaders:
    """ASGI middleware: adds `ALWAYS` to every HTTP answer that does not set its own value."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in ALWAYS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
