"""What the receiver does with the SES notifications `POST /inbound/ses` recorded: a customer's emailed reply
resumes its run, a bounce or a complaint suppresses the address and ends the upsell waiting for it.

Each notification is recorded (SQLite, like the alert spool) before SNS gets its 202, and worked here, in the
background, until it is done: while Prefect or the store is away it stays pending and is tried again. A reply is
matched only by what we signed or sent (the signed Reply-To address, or our Message-ID in In-Reply-To /
References), never by a guess; one that matches nothing, or whose run is not waiting for an answer, is recorded
with that status and shown by `upsell inbound`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any

from flows.api import NotWaitingError, UpsellRequestError
from flows.models import REPLY_WAITS
from tasks.content.email import event_of_message_id
from tasks.content.replies import InboundReply, parse_reply
from tasks.runtime.links import run_of_reply_address
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

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> asyncio.Task[None]:
        return asyncio.create_task(self._loop(), name="inbound-worker")

    async def _loop(self) -> None:
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
            return await self.reply(await asyncio.to_thread(self.raw_email, event))
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

    async def reply(self, raw: bytes) -> Done:
        """Resume the run the reply answers, with what the reply means (an unclear one: a person reads it)."""
        reply = parse_reply(raw)
        if reply.auto_reply:
            return Done("auto_reply", reply.auto_reply_reason or "an automatic reply")
        run_id = await self.run_for(reply)
        if run_id is None:
            return Done("unmatched", "no signed reply address or Message-ID of ours")
        classifier = resolve_via_api("classifier", self.settings)
        intent = str(await asyncio.to_thread(classifier.classify, reply.text))
        answer: dict[str, Any] = {"text": reply.text}
        answer |= {"reply": intent} if intent in ("yes", "no", "maybe") else {"delivery": "unclear"}
        return await self.resume(run_id, answer, f"{getattr(classifier, 'name', 'classifier')}: {intent}")

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
        run_id = self._signed_run(self._header_addresses(event.get("mail", {})))
        if run_id is None:
            return Done(delivery, f"{', '.join(addresses)} suppressed; no run of ours named in the email")
        return await self.resume(run_id, {"delivery": delivery}, f"{', '.join(addresses)} suppressed")

    async def resume(self, run_id: str, answer: dict[str, Any], detail: str) -> Done:
        """Answer the run's reply wait; a run that is not waiting for one is recorded, never answered later."""
        try:
            await self.gateway.resume_wait(run_id, REPLY_WAITS[0], answer)
        except (NotWaitingError, UpsellRequestError) as exc:  # a person is reading an earlier reply, or it ended
            return Done("not_waiting", f"{detail}; {exc}", run_id)
        return Done("resumed", detail, run_id)

    async def run_for(self, reply: InboundReply) -> str | None:
        """The run a reply answers: the signed address it was sent to, else our Message-ID it answers."""
        run_id = self._signed_run(reply.recipients)
        if run_id is not None:
            return run_id
        for message_id in [reply.in_reply_to, *reversed(reply.references)]:
            event_id = event_of_message_id(message_id or "")
            if event_id is not None:
                return await self.gateway.run_for_event(event_id)
        return None

    def _signed_run(self, addresses: list[str]) -> str | None:
        secret = self.settings.link_secret.get_secret_value()
        return next((run for a in addresses if (run := run_of_reply_address(a, secret)) is not None), None)

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
