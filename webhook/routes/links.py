"""Reply and approval links (`/links/{token}`) and one-click unsubscribe (`/unsubscribe/{token}`): a GET shows
what the link will do and changes nothing (mail scanners prefetch links); a POST does it, once."""

from __future__ import annotations

import hashlib
import logging
from typing import Any
from urllib.parse import parse_qs
from uuid import UUID

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from prefect.exceptions import ObjectNotFound

from flows.api import NotWaitingError, UpsellRequestError, validate_wait_input
from flows.models import WAIT_INPUTS
from tasks.runtime.links import InvalidToken, LinkToken, canonical_token, verify_token
from webhook.deps import FormBody, GatewayDep, SettingsDep, SpoolDep, StoreDep
from webhook.gateway import PrefectUnavailable
from webhook.pages import (
    Sender,
    confirm_form,
    confirmation_page,
    describe_decision,
    describe_reply,
    describe_unsubscribe,
    page,
)
from webhook.settings import ReceiverSettings

logger = logging.getLogger("upsell.receiver")
router = APIRouter()

#: How long a one-click unsubscribe waits to be applied before the answer (it is recorded durably first).
UNSUBSCRIBE_APPLY_S = 2.0

def _pages(why: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI answers of a link route: each status it really gives, an HTML page saying why."""
    html = {"text/html": {"schema": {"type": "string"}}}
    return {code: {"description": text, "content": html} for code, text in why.items()}


_ASKS = "What the link will do, with the button that does it; nothing is changed yet."
_INVALID = "The link is incomplete, altered, or does not belong here: nothing was changed."
_EXPIRED = "The link has expired: nothing was changed."
SHOW_LINK = _pages({200: _ASKS, 403: _INVALID, 410: _EXPIRED + " Or it was already used, the question was already"
                                                   " answered (by another link of the same email), or the upsell"
                                                   " ended."})
USE_LINK = _pages({
    200: "The answer was recorded.",
    403: _INVALID + " Or the link carries an answer that cannot be used.",
    409: "The run is not waiting for this answer (already answered, or not ready yet): nothing was changed.",
    410: _EXPIRED + " Or it was already used, or the run no longer exists.",
    503: "Prefect could not be reached, or the answer failed unexpectedly: nothing was changed, the link still"
         " works.",
})
SHOW_UNSUBSCRIBE = _pages({200: _ASKS, 403: _INVALID, 410: _EXPIRED})
UNSUBSCRIBE = _pages({
    200: "The address is unsubscribed.",
    400: "The request does not carry List-Unsubscribe=One-Click: nothing was changed.",
    403: _INVALID,
    410: _EXPIRED,
})


def sender_of(settings: ReceiverSettings) -> Sender:
    """Who the customer's pages say is asking: the name and postal address the email is signed with."""
    return Sender(settings.sender_name, settings.sender_postal_address)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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


def used_page() -> Response:
    return page("This link was already used", "Your answer was recorded the first time. Nothing was changed.", 410)


def closed_page(why: str, *, customer: bool, sender: Sender) -> Response:
    """The page of a link that can no longer be used: another link of the same email or message was used (or the
    question answered another way), or the upsell ended; said at once, not after a confirmation."""
    if why == "answered":
        told = "Your answer was recorded earlier" if customer else "Someone already decided this"
        return page("This was already answered", f"{told}. Nothing was changed.", 410,
                    sender=sender if customer else None)
    return page("This request is closed", "It no longer waits for an answer. Nothing was changed.", 410,
                sender=sender if customer else None)


@router.get("/links/{token}", response_class=HTMLResponse, responses=SHOW_LINK,
            summary="Confirmation page of a reply/approval link")
async def show_link(token: str, settings: SettingsDep, store: StoreDep, gateway: GatewayDep) -> Response:
    """Shows what the link will do, and for which upsell; changes nothing (mail scanners prefetch links)."""
    link = open_link(token, settings, unsubscribe=False)
    if isinstance(link, Response):
        return link
    if store.link_used(token_hash(token)):
        return used_page()
    closed = await gateway.link_closed(link.flow_run_id, link.wait)
    if closed is not None:
        return closed_page(closed, customer=link.wait == "reply", sender=sender_of(settings))
    summary = await gateway.run_summary(link.flow_run_id)
    if link.wait == "reply":
        sender = sender_of(settings)
        reply = describe_reply(link.value, summary, sender)
        return confirmation_page(reply, confirm_form(reply.button), sender)
    decision = describe_decision(link.wait, link.value, summary)
    return confirmation_page(decision, confirm_form(decision.button))


@router.post("/links/{token}", response_class=HTMLResponse, responses=USE_LINK,
             summary="Answer a wait with the link's value")
async def use_link(token: str, settings: SettingsDep, store: StoreDep, gateway: GatewayDep) -> Response:
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
        await gateway.resume_wait(link.flow_run_id, link.wait, run_input)
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
    except Exception:  # answered on purpose: the link is freed, and a second use meets the run's own guard
        logger.exception("Link answer for flow run %s (%s) failed unexpectedly; the link stays usable",
                         link.flow_run_id, link.wait)
        store.release_link(digest)
        return page("Please try again", "Something went wrong while recording your answer. Nothing was "
                    "changed; the link still works.", 503)
    if link.wait == "reply":
        return page("Thank you", "Your answer was recorded.", sender=sender_of(settings))
    return page("Thank you", "Your decision was recorded.")


@router.get("/unsubscribe/{token}", response_class=HTMLResponse, responses=SHOW_UNSUBSCRIBE,
            summary="Unsubscribe confirmation page")
async def show_unsubscribe(token: str, settings: SettingsDep, store: StoreDep) -> Response:
    """Asks for confirmation, unless the address is unsubscribed already; changes nothing (RFC 8058 clients POST
    instead)."""
    link = open_link(token, settings, unsubscribe=True)
    if isinstance(link, Response):
        return link
    sender = sender_of(settings)
    email = str(link.value.get("email", "")).strip()
    if email and store.unsubscribed(email):
        return page("You are already unsubscribed", f"{email} receives no more of these emails. Nothing was changed.",
                    sender=sender)
    confirmation = describe_unsubscribe(link.value, sender)
    return confirmation_page(confirmation, confirm_form(confirmation.button, {"List-Unsubscribe": "One-Click"}),
                             sender)


@router.post("/unsubscribe/{token}", response_class=HTMLResponse, responses=UNSUBSCRIBE,
             summary="RFC 8058 one-click unsubscribe")
async def unsubscribe(token: str, request_body: FormBody, settings: SettingsDep, store: StoreDep,
                      spool: SpoolDep) -> Response:
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
    store.record_unsubscribe(token_hash(token), email, link.flow_run_id)
    # applied now when Prefect and the store answer within a moment; otherwise by a later dispatcher round
    applied = await spool.apply_unsubscribes(timeout_s=UNSUBSCRIBE_APPLY_S)
    logger.info("Unsubscribe of %s recorded (flow run %s)%s", email, link.flow_run_id,
                "" if applied else "; it will be applied when Prefect and the store answer")
    return page("You are unsubscribed", f"{email} will receive no more of these emails.", sender=sender_of(settings))
