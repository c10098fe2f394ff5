"""What the receiver does with the SES notifications `POST /inbound/ses` recorded: a customer's emailed reply
resumes its run, a bounce or a complaint suppresses the address and ends the upsell waiting for it.

Each notification is recorded (SQLite, like the alert spool) before SNS gets its 202, and worked here, in the
background, until it is done: while Prefect or the store is away it stays pending and is tried again.

A reply names its run only by the signed reply address among SES's envelope recipients (`receipt.recipients`), on
our reply domain: the To, Cc, In-Reply-To and References headers are the sender's own words and match nothing. It
is applied as the customer's answer only when its one sender is the contact the address was made for and SES
vouches for the sender's domain (`unverified_because`); any other email to a signed address waits for a person,
with the reason and the sender. One that matches nothing, or whose run is not waiting for an answer, is recorded
with that status and shown by `upsell inbound`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any

from prefect.exceptions import ObjectNotFound

from flows.api import NotWaitingError, UpsellRequestError
from flows.models import REPLY_WAITS
from tasks.content.replies import InboundReply, parse_reply
from tasks.runtime.links import SignedReplyAddress, read_reply_address
from webhook.gateway import PrefectGateway, PrefectUnavailable, resolve_via_api
from webhook.settings import ReceiverSettings
from webhook.store import ReceiverStore

logger = logging.getLogger("upsell.receiver")

#: How often pending notifications are tried again (a new one wakes the worker at once).
ROUND_S = 5.0


@dataclass(frozen=True)
class Done:
    """What became of one notification: its final status, why, and the run it concerned."""

    status: str
    detail: str = ""
    flow_run_id: str | None = None


class InboundWorker:
    """Works the recorded SES notifications in the background, oldest first."""

    def __init__(self, settings: ReceiverSettings, store: ReceiverStore, gateway: PrefectGateway) -> None:
        self.settings, self.store, self.gateway = settings, store, gateway
        self._wake = asyncio.Event()
        self._parser: ProcessPoolExecutor | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> asyncio.Task[None]:
        return asyncio.create_task(self._loop(), name="inbound-worker")

    async def _loop(self) -> None:
        try:
            while True:
                try:
                    await self.work_pending()
                except Exception:  # never let one bad round stop the worker; the rows stay pending
                    logger.exception("Inbound round failed; retrying")
                try:
                    await asyncio.wait_for(self._wake.wait(), ROUND_S)
                except TimeoutError:
                    pass
                self._wake.clear()
        finally:
            if self._parser is not None:
                self._parser.shutdown(wait=False, cancel_futures=True)

    async def parse(self, raw: bytes) -> InboundReply | None:
        """The email read (`parse_reply`) in a process of its own, started at the first email: a 10 MB email holds
        the interpreter for long single steps (splitting its lines), which a thread would not keep from the event
        loop. None when the parser died on it."""
        if self._parser is None:
            self._parser = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        try:
            return await asyncio.get_running_loop().run_in_executor(self._parser, parse_reply, raw)
        except BrokenProcessPool:  # a new parser for the next email; this one is recorded as unreadable
            self._parser = None
            return None

    async def work_pending(self) -> int:
        """Work every pending notification once; the number finished."""
        finished = 0
        for row in self.store.pending_inbound(limit=100):
            try:
                done = await self.work(json.loads(row["message"]))
            except (PrefectUnavailable, OSError, TimeoutError) as exc:  # kept pending: tried again every round
                attempts = int(row.get("attempts") or 0) + 1
                self.store.mark_inbound(row["message_id"], status="received", detail=f"{type(exc).__name__}: {exc}",
                                        attempts=attempts)  # fmt: skip
                continue
            except (ValueError, KeyError, TypeError) as exc:  # not a notification we can read: kept, not retried
                done = Done("unreadable", f"{type(exc).__name__}: {exc}")
            self.store.mark_inbound(row["message_id"], status=done.status, detail=done.detail,
                                    flow_run_id=done.flow_run_id)  # fmt: skip
            logger.info("Inbound %s: %s %s", row["message_id"], done.status, done.detail)
            finished += 1
        return finished

    async def work(self, event: dict[str, Any]) -> Done:
        """One SES event (the notification's Message): a received email, a bounce or a complaint."""
        kind = event.get("notificationType") or event.get("eventType")
        if kind == "Received":
            return await self.reply(event)
        if kind in ("Bounce", "Complaint"):
            return await self.undeliverable(kind, event)
        return Done("ignored", f"notification type {kind!r}")

    def raw_email(self, event: dict[str, Any]) -> bytes:
        """The received email: inline in the notification (the receipt rule's SNS action), or in S3."""
        action = event["receipt"]["action"]
        if action.get("type") == "S3":
            mailbox = resolve_via_api("mailbox", self.settings)
            try:
                return bytes(mailbox.read(action["bucketName"], action["objectKey"]))
            finally:
                mailbox.close()
        content = event["content"]
        if action.get("encoding") == "BASE64":
            try:
                return base64.b64decode(content, validate=True)
            except binascii.Error as exc:
                raise ValueError(f"content is not base64: {exc}") from None
        return str(content).encode("utf-8", "surrogateescape")

    async def reply(self, event: dict[str, Any]) -> Done:
        """Resume the run the reply answers, with what the reply means, when the customer wrote it; anything else
        that reached a run's signed address goes to a person, with the reason and the sender; the rest changes
        nothing. Reading, parsing and classifying happen off the event loop (an email may be megabytes)."""
        receipt = event["receipt"]
        signed = self._signed_address([str(a) for a in receipt.get("recipients", []) or []])
        if signed is None:  # the envelope names no address of ours: To/Cc/threads are the sender's words
            return Done("unmatched", "sent to no signed reply address of ours")
        reply = await self.parse(await asyncio.to_thread(self.raw_email, event))
        if reply is None:
            return Done("unreadable", "the email could not be parsed", signed.flow_run_id)
        if reply.auto_reply:
            return Done("auto_reply", reply.auto_reply_reason or "an automatic reply", signed.flow_run_id)
        doubt = unverified_because(signed, reply, receipt, event.get("mail", {}),
                                   self.settings.link_secret.get_secret_value())  # fmt: skip
        if doubt:
            unverified = {"text": reply.text, "delivery": "unverified", "sender": reply.from_address, "why": doubt}
            done = await self.resume(signed.flow_run_id, unverified, f"from {reply.from_address or 'nobody'}: {doubt}")
            return Done("unverified", done.detail, done.flow_run_id) if done.status == "resumed" else done
        classifier = resolve_via_api("classifier", self.settings)
        intent = str(await asyncio.to_thread(classifier.classify, reply.text))
        answer: dict[str, Any] = {"text": reply.text}
        answer |= {"reply": intent} if intent in ("yes", "no", "maybe") else {"delivery": "unclear"}
        return await self.resume(signed.flow_run_id, answer, f"{getattr(classifier, 'name', 'classifier')}: {intent}")

    async def undeliverable(self, kind: str, event: dict[str, Any]) -> Done:
        """A hard bounce or a complaint: the addresses are suppressed and the upsell waiting for them ends."""
        if kind == "Bounce":
            bounce = event.get("bounce", {})
            addresses = [r.get("emailAddress", "") for r in bounce.get("bouncedRecipients", [])]
            if bounce.get("bounceType") != "Permanent":
                return Done("soft_bounce", f"{bounce.get('bounceType')}: {', '.join(addresses)}")
            reason, delivery = "hard bounce", "bounced"
        else:
            addresses = [r.get("emailAddress", "") for r in event.get("complaint", {}).get("complainedRecipients", [])]
            reason, delivery = "complaint", "complained"
        await asyncio.to_thread(self._suppress, [a for a in addresses if a], reason)
        signed = self._signed_address(self._header_addresses(event.get("mail", {})))
        if signed is None:
            return Done(delivery, f"{', '.join(addresses)} suppressed; no run of ours named in the email")
        return await self.resume(signed.flow_run_id, {"delivery": delivery}, f"{', '.join(addresses)} suppressed")

    async def resume(self, run_id: str, answer: dict[str, Any], detail: str) -> Done:
        """Answer the run's reply wait; a run that is not waiting for one is recorded, never answered later."""
        try:
            await self.gateway.resume_wait(run_id, REPLY_WAITS[0], answer)
        except (NotWaitingError, UpsellRequestError) as exc:  # a person is reading an earlier reply, or it ended
            return Done("not_waiting", f"{detail}; {exc}", run_id)
        except ObjectNotFound:  # a signed address of a run since deleted: nothing to answer, ever
            return Done("not_waiting", f"{detail}; the run no longer exists", run_id)
        return Done("resumed", detail, run_id)

    def _signed_address(self, addresses: list[str]) -> SignedReplyAddress | None:
        """The first of `addresses` that is a reply address we signed, on our reply domain."""
        secret, domain = self.settings.link_secret.get_secret_value(), self.settings.reply_domain
        return next((found for a in addresses if (found := read_reply_address(a, secret, domain)) is not None), None)

    @staticmethod
    def _header_addresses(mail: dict[str, Any]) -> list[str]:
        """Every address-looking value of the original email's headers SES sent along (Reply-To among them)."""
        values = [str(h.get("value", "")) for h in mail.get("headers", []) if isinstance(h, dict)]
        common = mail.get("commonHeaders", {})
        values += [str(v) for key in ("replyTo", "from", "to") for v in common.get(key, []) or []]
        return [address for _name, address in getaddresses(values) if "@" in address]

    def _suppress(self, addresses: list[str], reason: str) -> None:
        store = resolve_via_api("store", self.settings)
        try:
            for address in addresses:
                store.add_suppression(address, reason)
        finally:
            store.close()


#: SES's verdicts on the sender's domain (`receipt.<name>Verdict.status`: PASS, FAIL, GRAY, PROCESSING_FAILED).
VERDICTS = ("spf", "dkim", "dmarc")
_PASS = "PASS"


def unverified_because(
    signed: SignedReplyAddress, reply: InboundReply, receipt: dict[str, Any], mail: dict[str, Any], secret: str
) -> str:
    """Why a reply to a run's signed address cannot be applied as the customer's answer; empty when it can.

    It can when its one sender is the contact the address was made for, and SES vouches for the sender's domain:
    SPF (for an envelope sender of that domain) or DKIM (signed by that domain) passed, and DMARC did not fail.
    Anything else (a forwarded copy, a colleague, a spoofed From) is for a person to read, never applied.
    """
    if len(reply.from_addresses) != 1:
        return f"the email has {len(reply.from_addresses)} senders"
    sender = reply.from_addresses[0]
    if not signed.written_by(sender, secret):
        return "the sender is not the contact the email was sent to"
    domain = sender.rpartition("@")[2]
    status = {name: str((receipt.get(f"{name}Verdict") or {}).get("status", "")).upper() for name in VERDICTS}
    if status["dmarc"] == "FAIL":
        return "DMARC failed for the sender's domain"
    envelope = str(mail.get("source", "")).rpartition("@")[2].lower()
    spf = status["spf"] == _PASS and _aligned(envelope, domain)
    dkim = status["dkim"] == _PASS and any(_aligned(signer, domain) for signer in reply.dkim_domains)
    if not (spf or dkim):
        spf_said, dkim_said = status["spf"] or "none", status["dkim"] or "none"
        return f"neither SPF nor DKIM passed for {domain} (SPF {spf_said}, DKIM {dkim_said})"
    return ""


def _aligned(one: str, other: str) -> bool:
    """Whether two domains belong together (equal, or one under the other): DMARC's relaxed alignment, without
    the public-suffix list."""
    one, other = one.lower().rstrip("."), other.lower().rstrip(".")
    return bool(one and other) and (one == other or one.endswith(f".{other}") or other.endswith(f".{one}"))
