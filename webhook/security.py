"""The security headers of every answer of the receiver.

A one-click link page must not be framed by another site (a hidden frame could make the customer press
"Unsubscribe" or a reviewer press "Approve"), a file must not be sniffed into another type, and a page may run
or load nothing but what it was built with. Each HTML page gets a Content-Security-Policy that allows exactly
its own inline blocks (by hash); every other answer gets one that allows nothing at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable

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
#: Added to every answer when the receiver's public URL is https: browsers then never use plain http for it.
HSTS = ("Strict-Transport-Security", "max-age=31536000; includeSubDomains")

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
    """ASGI middleware: adds `ALWAYS` (and HSTS, when `https`) to every HTTP answer that does not set its own."""

    def __init__(self, app: ASGIApp, https: bool = False) -> None:
        self.app = app
        self.headers = (ALWAYS | dict([HSTS])) if https else ALWAYS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """ASGI middleware: every request body is read here, at most `limit_for(path)` bytes, before any route sees it.

    A declared Content-Length over the limit is answered 413 without reading a byte; a body sent without one
    (chunked) is counted as it streams and answered 413 as soon as it passes the limit. The route then gets the
    body from memory, so no route reads (or authenticates) more than its limit, and an attacker's megabytes are
    never held: the server stops reading them.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._too_large(send, f"body is {int(declared)} bytes; the limit is {limit}")
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(send, f"body exceeds the {limit}-byte limit")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, delivered = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:  # the body was given: what comes next is the disconnect, when the client goes
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    async def _too_large(send: Send, detail: str) -> None:
        answer = json.dumps({"error": "body_too_large", "field": "body", "detail": detail, "errors": []}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": answer})
