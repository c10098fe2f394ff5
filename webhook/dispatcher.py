"""Turns accepted alerts into upsell flow runs: once per event id, one open upsell per account, a cooldown,
and a durable spool replayed in order while the Prefect API is unreachable."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import ArtifactSort
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from blocks.registry import resolve
from deployments.api import create_upsell_run, deployment_id_for
from flows.models import STAGE_ORDER, UsageAlert, automation_level_for
from tasks.recover_runs import HEARTBEAT_EVENT
from webhook.models import AlertAnswer, AlertPayload, AlertStatus
from webhook.settings import ReceiverSettings
from webhook.store import ReceiverStore

logger = logging.getLogger("upsell.receiver")
T = TypeVar("T")

#: HTTP status of each answer: a new upsell or a spooled alert is accepted for later work (202).
NEW_STATUS = {"triggered": 202, "queued": 202}


class PrefectUnavailable(Exception):
    """The Prefect API could not be reached (or cannot create the run yet): the alert goes to the spool."""


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, (httpx.TransportError, TimeoutError, OSError)):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code in (408, 429)
    return False


def qualification(alert: AlertPayload, settings: ReceiverSettings) -> tuple[bool, str | None, str | None]:
    """(qualifies, reason, detail): an eligible metric AND (a qualifying severity OR a high value)."""
    if alert.metric_type not in settings.qualifying_metrics:
        return False, "metric_not_eligible", (
            f"metric_type {alert.metric_type!r} is not one of {', '.join(settings.qualifying_metrics)}"
        )
    if alert.severity in {s.value for s in settings.qualifying_severities}:
        return True, None, None
    if alert.current_value > settings.high_value_threshold:
        return True, None, None
    return False, "below_high_value_threshold", (
        f"severity {alert.severity} and current_value {alert.current_value:g} <= {settings.high_value_threshold:g}"
    )


def attached_key(event_id: str) -> str:
    """The flow run input key of an alert attached to an open run: Prefect keys allow only [a-z0-9-], so the
    event id is slugged and a short hash of it keeps ids that slug alike apart."""
    slug = re.sub(r"[^a-z0-9]+", "-", event_id.lower()).strip("-")[:150]
    return f"upsell-attached-{slug}-{hashlib.sha256(event_id.encode()).hexdigest()[:8]}"


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
    """Decides what an alert becomes and creates its run; replays the spool in the background."""

    def __init__(self, settings: ReceiverSettings, store: ReceiverStore, client: PrefectClient) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.api_down = False
        self._deployment_id: UUID | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._wake = asyncio.Event()
        self._unsubscribes_failing = False

    # ---- the Prefect API, bounded in time ----

    async def call(self, make: Callable[[], Awaitable[T]]) -> T:
        """One API call, at most `prefect_timeout_s` (Prefect's client retries a dead API for a minute)."""
        try:
            async with asyncio.timeout(self.settings.prefect_timeout_s):
                result = await make()
        except Exception as exc:
            if is_unavailable(exc):
                # a busy API (5xx, 429, or slow but answering its health check) spools this alert only;
                # an API that does not answer at all sends every new alert straight to the spool
                busy = isinstance(exc, httpx.HTTPStatusError) or (
                    isinstance(exc, TimeoutError) and await self._answers_health()
                )
                if not busy:
                    if not self.api_down:
                        logger.warning("Prefect API unreachable (%s: %s); spooling alerts", type(exc).__name__, exc)
                    self.api_down = True
                raise PrefectUnavailable(f"{type(exc).__name__}: {exc}") from exc
            raise
        return result

    async def _answers_health(self) -> bool:
        """Whether the API answers its health check within a second (slow is not down)."""
        try:
            async with httpx.AsyncClient(timeout=1.0) as http:
                return (await http.get(f"{str(self.client.api_url).rstrip('/')}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    # ---- accepting an alert ----

    async def accept(self, payload: AlertPayload) -> tuple[int, AlertAnswer]:
        """Record the alert once (the event id is the key), decide it, and say what became of it."""
        alert = payload.to_alert()
        qualifies, reason, detail = qualification(payload, self.settings)
        level = automation_level_for(alert.severity, self.settings.severity_levels)
        spool_now = qualifies and self.api_down  # decide() would spool it first thing: one write instead of three
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
            if not from_spool and (self.api_down or self.store.queued_before(account_id, event_id)):
                why = "Prefect API unreachable" if self.api_down else "an earlier alert of the account is queued"
                return self._spool(event_id, why, wake=True)
            try:
                for upsell in self.store.open_upsells(account_id, exclude=event_id):
                    if not await self._still_open(upsell):
                        continue
                    detail = f"upsell of event {upsell['event_id']} is still open; alert recorded on it"
                    await self._record_on_run(upsell["flow_run_id"], alert)
                    self.store.update(event_id, status="attached", reason="open_upsell", detail=detail,
                                      flow_run_id=upsell["flow_run_id"], open_event_id=upsell["event_id"])
                    return answer_from_row(self._row(event_id), duplicate=False)
                ended = self.store.last_ended_at(account_id)
                if ended is not None and time.time() - ended < self.settings.cooldown_s:
                    until = datetime.fromtimestamp(ended + self.settings.cooldown_s, UTC).isoformat()
                    self.store.update(event_id, status="cooldown", reason="cooldown",
                                      detail=f"the account's last upsell ended recently; cooldown until {until}")
                    return answer_from_row(self._row(event_id), duplicate=False)
                run = await self._create_run(alert)
            except PrefectUnavailable as exc:
                return self._spool(event_id, str(exc), wake=not from_spool)
            self.store.update(event_id, status="triggered", flow_run_id=str(run.id))
            return answer_from_row(self._row(event_id), duplicate=False)

    def _row(self, event_id: str) -> dict[str, Any]:
        row = self.store.get(event_id)
        assert row is not None
        return row

    def _spool(self, event_id: str, why: str, *, wake: bool) -> AlertAnswer:
        row = self._row(event_id)
        self.store.update(event_id, status="queued", attempts=row["attempts"] + 1, last_error=why)
        if wake and not self.api_down:
            self._wake.set()
        return answer_from_row(self._row(event_id), duplicate=False)

    async def _create_run(self, alert: UsageAlert) -> Any:
        level = automation_level_for(alert.severity, self.settings.severity_levels)
        try:
            # Prefect's idempotency key (upsell:<event_id>) is the second guard: a replay finds the same run
            if self._deployment_id is None:  # looked up once, not once per alert
                self._deployment_id = await self.call(
                    lambda: deployment_id_for(self.client, self.settings.deployment_name))
            deployment_id = self._deployment_id
            return await self.call(lambda: create_upsell_run(
                self.client, alert, level, deployment_name=self.settings.deployment_name,
                deployment_id=deployment_id))
        except ObjectNotFound as exc:
            # not a bad alert: the deployment is not registered (yet), or was re-created under a new id;
            # keep the alert until it is there, and look the id up again
            self._deployment_id = None
            raise PrefectUnavailable(f"deployment {self.settings.deployment_name} not found") from exc

    async def _record_on_run(self, flow_run_id: str, alert: UsageAlert) -> None:
        """Keep the attached alert on the open run itself, as a flow run input (`attached_key(event id)`)."""
        try:
            await self.call(lambda: self.client.create_flow_run_input(
                UUID(flow_run_id), key=attached_key(alert.event_id), value=alert.model_dump_json()))
        except ObjectAlreadyExists:  # a replay of the same alert: already recorded
            pass

    async def _still_open(self, upsell: dict[str, Any]) -> bool:
        """Whether the upsell's run is not final yet; a final one is stamped with its end (cooldown start)."""
        try:
            run = await self.call(lambda: self.client.read_flow_run(UUID(upsell["flow_run_id"])))
        except ObjectNotFound:
            self.store.update(upsell["event_id"], ended_at=time.time())
            return False
        if run.state is None or not run.state.is_final():
            dead = await self._dead(run)
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

    async def _dead(self, run: FlowRun) -> str | None:
        """Why a run that is not final will not go on by itself (no heartbeat, no runner), or None if alive.

        The same signs the recovery sweep reads: Running with no `prefect.flow-run.heartbeat` for
        `dead_after_s`, or Pending that long. A waiting run is alive: it holds no process.
        """
        state = run.state
        after = self.settings.dead_after_s
        stale = datetime.now(UTC) - timedelta(seconds=after)
        if state is None or state.timestamp >= stale:
            return None
        if state.type is StateType.PENDING:
            return f"Pending for over {after:g} s"
        if state.type is not StateType.RUNNING:
            return None
        page = await self.call(lambda: self.client.read_events(
            filter=EventFilter(occurred=EventOccurredFilter(since=stale),
                               event=EventNameFilter(name=[HEARTBEAT_EVENT]),
                               resource=EventResourceFilter(id=[f"prefect.flow-run.{run.id}"])),
            limit=1))  # fmt: skip
        return None if page.events else f"Running with no heartbeat for {after:g} s"

    # ---- the spool ----

    def wake(self) -> None:
        """Start the next round now (spooled alerts, pending unsubscribes) instead of at the next interval."""
        self._wake.set()

    async def run_forever(self) -> None:
        """Replay the spool, oldest first, whenever it is not empty; probe the API while it is down."""
        progress = False
        while True:
            if not progress:  # after a productive round, go straight on with the rest of the spool
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.settings.dispatch_interval_s)
                except TimeoutError:
                    pass
                self._wake.clear()
            progress = False
            try:
                # an alert whose run creation hung and whose handler died is spooled again, not forgotten
                stale = self.store.requeue_received(older_than_s=2 * self.settings.prefect_timeout_s + 5)
                if stale:
                    logger.warning("Requeued %d alert(s) left undecided; replaying them", stale)
                progress = await self.replay() > 0
                await self.apply_unsubscribes()
            except Exception:
                # the loop must outlive any one failure; the alerts stay in the spool for the next round
                logger.exception("Spool replay failed; retrying in %ss", self.settings.dispatch_interval_s)

    async def replay(self) -> int:
        """Decide every spooled alert: accounts in parallel, each account's alerts in arrival order, stopping
        an account at the first alert the API still cannot take."""
        rows = self.store.queued(limit=5000)
        if not rows:
            return 0
        if self.api_down and await self.probe() is not None:
            return 0
        by_account: dict[str, list[UsageAlert]] = {}
        for row in rows:
            by_account.setdefault(row["account_id"], []).append(UsageAlert.model_validate_json(row["payload"]))
        gate = asyncio.Semaphore(self.settings.replay_concurrency)

        async def replay_account(alerts: list[UsageAlert]) -> int:
            done = 0
            async with gate:
                for alert in alerts:
                    try:
                        if self.api_down or (await self.decide(alert, from_spool=True)).queued:
                            break
                    except Exception as exc:  # this account waits (in order); the other accounts go on
                        logger.exception("Replaying alert %s failed; it stays in the spool", alert.event_id)
                        self._spool(alert.event_id, f"replay failed: {type(exc).__name__}", wake=False)
                        break
                    done += 1
            return done

        done = sum(await asyncio.gather(*(replay_account(a) for a in by_account.values())))
        if done:
            logger.info("Replayed %d spooled alert(s); %d left", done, self.store.spool_depth())
        return done

    async def apply_unsubscribes(self, timeout_s: float | None = None) -> int:
        """Add every recorded, not yet applied one-click unsubscribe to the suppression list the sends check.

        The list lives in the opportunity store, found through a Prefect block: while Prefect or the store is
        down the unsubscribes wait here, on disk, and are applied on a later round.
        """
        pending = self.store.pending_unsubscribes()
        if not pending or (timeout_s is not None and self.api_down):
            return 0
        try:
            async with asyncio.timeout(timeout_s or self.settings.prefect_timeout_s * 2):
                applied = await asyncio.to_thread(self._add_suppressions, pending)
        except Exception as exc:  # Prefect or the store is away: the unsubscribes stay recorded for the next round
            log = logger.debug if self._unsubscribes_failing else logger.warning  # once per outage, not per round
            log("%d unsubscribe(s) not applied yet (%s); retrying", len(pending), type(exc).__name__)
            self._unsubscribes_failing = True
            return 0
        self._unsubscribes_failing = False
        logger.info("Applied %d unsubscribe(s) to the suppression list", applied)
        return applied

    def _add_suppressions(self, pending: list[dict[str, Any]]) -> int:
        updates = {PREFECT_API_URL: self.settings.prefect_api_url} if self.settings.prefect_api_url else {}
        with temporary_settings(updates=updates):
            suppressions = resolve("store", self.settings).client  # the saved store block, or the local stand-in
        try:
            for row in pending:
                suppressions.add_suppression(row["email"], "one-click unsubscribe")
                self.store.mark_unsubscribe_applied(row["token_hash"])
        finally:
            suppressions.close()
        return len(pending)

    async def probe(self) -> Exception | None:
        """Check the API; clears the down flag when it answers."""
        try:
            async with asyncio.timeout(self.settings.prefect_timeout_s):
                error = await self.client.api_healthcheck()
        except TimeoutError as exc:
            error = exc
        if error is None and self.api_down:
            logger.info("Prefect API is back; replaying %d spooled alert(s)", self.store.spool_depth())
            self.api_down = False
        elif error is not None:
            self.api_down = True
        return error

    # ---- status ----

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
            run = await self.call(lambda: self.client.read_flow_run(UUID(row["flow_run_id"])))
            status.run_state = run.state.name if run.state else None
            artifacts = await self.call(lambda: self.client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"upsell-{alert.slug}"])),
                sort=ArtifactSort.CREATED_DESC, limit=1,
            ))
            events = await self.call(lambda: self.client.read_events(
                filter=EventFilter(
                    occurred=EventOccurredFilter(since=run.created or datetime.now(UTC)),
                    event=EventNameFilter(prefix=["upsell."]),
                    resource=EventResourceFilter(id=[f"upsell.opportunity.{alert.opportunity_id}"]),
                ),
                limit=1,
            ))
        except (PrefectUnavailable, ObjectNotFound) as exc:
            status.run_error = str(exc) or type(exc).__name__
            return status
        # The stage: the latest of the run's stage event (emitted the moment a stage is reached, stored a
        # moment later) and its artifact (republished at each wait and at the end, as "Upsell <a>/<e>: <stage>").
        stages = [str(e.payload.get("stage")) for e in events.events[:1]]
        stages += [a.description.rsplit(": ", 1)[-1] for a in artifacts[:1] if a.description]
        order = {stage.value: i for i, stage in enumerate(STAGE_ORDER)}
        known = [stage for stage in stages if stage in order]
        status.run_stage = max(known, key=order.__getitem__) if known else None
        return status
