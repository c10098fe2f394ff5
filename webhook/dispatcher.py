"""Decides what an accepted alert becomes: once per event id, one open upsell per account, a cooldown, and the
spool while the Prefect API is unreachable. The Prefect calls are the gateway's; the replays are the spool's."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from prefect.exceptions import ObjectNotFound

from flows.models import UsageAlert, automation_level_for, qualification
from flows.playbooks import PlaybookFile
from webhook.gateway import PrefectGateway, PrefectUnavailable
from webhook.models import AlertAnswer, AlertPayload, AlertStatus
from webhook.settings import ReceiverSettings
from webhook.spool import Spool
from webhook.store import ReceiverStore

logger = logging.getLogger("upsell.receiver")

#: HTTP status of each answer: a new upsell or a spooled alert is accepted for later work (202).
NEW_STATUS = {"triggered": 202, "queued": 202}


def answer_from_row(row: dict[str, Any], *, duplicate: bool) -> AlertAnswer:
    status = row["status"]
    return AlertAnswer(
        event_id=row["event_id"],
        triggered=(status == "triggered"),
        queued=status in ("queued", "received"),
        duplicate=duplicate,
        flow_run_id=row["flow_run_id"],
        automation_level=row["automation_level"] if status in ("triggered", "queued", "received") else None,
        reason=row["reason"] if status not in ("triggered", "queued", "received") else None,
        detail=row["detail"],
        open_event_id=row["open_event_id"],
    )


class AlertDispatcher:
    """Records each alert once, decides it (attach, cooldown, new run or spool) and reports what it became."""

    def __init__(self, settings: ReceiverSettings, store: ReceiverStore, gateway: PrefectGateway,
                 spool: Spool, playbooks: PlaybookFile | None = None) -> None:
        self.settings = settings
        self.playbooks = playbooks or PlaybookFile()
        self.store = store
        self.gateway = gateway
        self.spool = spool
        self._locks: dict[str, asyncio.Lock] = {}

    async def accept(self, payload: AlertPayload) -> tuple[int, AlertAnswer]:
        """Record the alert once (the event id is the key), decide it, and say what became of it."""
        alert = payload.to_alert()
        settings = self.settings
        qualifies, reason, detail = qualification(
            alert, settings.qualifying_metrics, settings.qualifying_severities, settings.high_value_threshold
        )
        # the level the alert's playbook sets, else the severity's (a playbook chosen on the contract may change it)
        level = self.playbooks.choose(alert).automation_level or automation_level_for(
            alert.severity, settings.severity_levels)
        spool_now = qualifies and self.gateway.api_down  # decide() would spool it first: one write instead of three
        inserted = self.store.insert_alert(
            event_id=alert.event_id, account_id=alert.account_id, payload=alert.model_dump_json(),
            automation_level=level.value, qualified=qualifies,
            status="queued" if spool_now else ("received" if qualifies else "not_qualified"),
            reason=reason, detail=detail, attempts=1 if spool_now else 0,
            last_error="Prefect API unreachable" if spool_now else None,
        )
        if inserted and spool_now:
            return 202, AlertAnswer(event_id=alert.event_id, triggered=False, queued=True,
                                    automation_level=level.value)
        if not inserted:
            return 200, await self._answer_duplicate(alert.event_id)
        if not qualifies:
            return 200, AlertAnswer(event_id=alert.event_id, triggered=False, reason=reason, detail=detail)
        try:
            answer = await self.decide(alert, from_spool=False)
        except Exception:  # an accepted alert is never left undecided: the spool replays it
            logger.exception("Deciding alert %s failed; spooled for replay", alert.event_id)
            answer = self._spool(alert.event_id, "deciding the alert failed; replayed from the spool", wake=True)
        status = "queued" if answer.queued else ("triggered" if answer.triggered else "other")
        return NEW_STATUS.get(status, 200), answer

    async def _answer_duplicate(self, event_id: str) -> AlertAnswer:
        """A repeat gets the first delivery's answer; if that one is still being decided, wait for it."""
        deadline = time.monotonic() + 2 * self.settings.prefect_timeout_s + 1
        row = self.store.get(event_id)
        while row is not None and row["status"] == "received" and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            row = self.store.get(event_id)
        assert row is not None  # rows are never deleted
        return answer_from_row(row, duplicate=True)

    def _lock(self, account_id: str) -> asyncio.Lock:
        lock = self._locks.get(account_id)
        if lock is None:
            lock = self._locks[account_id] = asyncio.Lock()
        return lock

    async def decide(self, alert: UsageAlert, *, from_spool: bool) -> AlertAnswer:
        """Attach to an open upsell, refuse in cooldown, or start the run; spool when the API is away."""
        event_id, account_id = alert.event_id, alert.account_id
        async with self._lock(account_id):
            down = self.gateway.api_down
            if not from_spool and (down or self.store.queued_before(account_id, event_id)):
                why = "Prefect API unreachable" if down else "an earlier alert of the account is queued"
                return self._spool(event_id, why, wake=True)
            try:
                for upsell in self.store.open_upsells(account_id, exclude=event_id):
                    if not await self._still_open(upsell):
                        continue
                    detail = f"upsell of event {upsell['event_id']} is still open; alert recorded on it"
                    await self.gateway.record_on_run(upsell["flow_run_id"], alert)
                    self.store.update(event_id, status="attached", reason="open_upsell", detail=detail,
                                      flow_run_id=upsell["flow_run_id"], open_event_id=upsell["event_id"])
                    return answer_from_row(self._row(event_id), duplicate=False)
                ended = self.store.last_ended_at(account_id)
                cooldown_s = self.cooldown_s(alert)
                if ended is not None and time.time() - ended < cooldown_s:
                    until = datetime.fromtimestamp(ended + cooldown_s, UTC).isoformat()
                    self.store.update(event_id, status="cooldown", reason="cooldown",
                                      detail=f"the account's last upsell ended recently; cooldown until {until}")
                    return answer_from_row(self._row(event_id), duplicate=False)
                run = await self.gateway.create_run(alert, self.playbooks.on_alert(alert))
            except PrefectUnavailable as exc:
                return self._spool(event_id, str(exc), wake=not from_spool)
            self.store.update(event_id, status="triggered", flow_run_id=str(run.id))
            return answer_from_row(self._row(event_id), duplicate=False)

    def cooldown_s(self, alert: UsageAlert) -> float:
        """The account's quiet period after an upsell: its playbook's (chosen on the alert), else the settings'."""
        hours = self.playbooks.choose(alert).cooldown_hours
        return self.settings.cooldown_s if hours is None else hours * 3600

    def _row(self, event_id: str) -> dict[str, Any]:
        row = self.store.get(event_id)
        assert row is not None
        return row

    def _spool(self, event_id: str, why: str, *, wake: bool) -> AlertAnswer:
        self.spool.put(event_id, why, wake=wake)
        return answer_from_row(self._row(event_id), duplicate=False)

    async def _still_open(self, upsell: dict[str, Any]) -> bool:
        """Whether the upsell's run is not final yet; a final one is stamped with its end (cooldown start)."""
        try:
            run = await self.gateway.read_run(upsell["flow_run_id"])
        except ObjectNotFound:
            self.store.update(upsell["event_id"], ended_at=time.time())
            return False
        if run.state is None or not run.state.is_final():
            dead = await self.gateway.dead_reason(run)
            if dead is None:
                return True
            # its process died: the account's upsell is over for the receiver (the cooldown starts now); the
            # recovery sweep runs the dead run again or ends it Failed, attached alerts stay on it
            logger.warning("Upsell run %s of event %s is dead (%s): not attaching to it", run.id,
                           upsell["event_id"], dead)  # fmt: skip
            self.store.update(upsell["event_id"], ended_at=time.time())
            return False
        ended = run.end_time or run.state.timestamp
        self.store.update(upsell["event_id"], ended_at=ended.timestamp() if ended else time.time())
        return False

    async def status(self, event_id: str) -> AlertStatus | None:
        """The stored decision, plus the run's state and stage when the API answers."""
        row = self.store.get(event_id)
        if row is None:
            return None
        base = answer_from_row(row, duplicate=False).model_dump()
        status = AlertStatus(
            **base, account_id=row["account_id"], status=row["status"], qualified=bool(row["qualified"]),
            received_at=row["received_at"],
        )
        if row["status"] == "queued":
            status.run_error = row["last_error"]
        if not row["flow_run_id"]:
            return status
        alert = UsageAlert.model_validate_json(row["payload"])
        if row["status"] == "attached":
            alert = UsageAlert.model_validate_json(self._row(row["open_event_id"])["payload"])
        try:
            run = await self.gateway.read_run(row["flow_run_id"])
            status.run_state = run.state.name if run.state else None
            status.run_stage = await self.gateway.run_stage(run, alert)
        except (PrefectUnavailable, ObjectNotFound) as exc:
            status.run_error = str(exc) or type(exc).__name__
        return status
