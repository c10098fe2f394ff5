"""The durable queue worker: alerts whose run could not be created yet wait in the receiver's file (status
`queued`) and are replayed in order when the Prefect API answers; one-click unsubscribes recorded there are
applied to the suppression list; alerts a dead handler left `received` are queued again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from flows.models import UsageAlert
from webhook.gateway import PrefectGateway, resolve_via_api
from webhook.models import AlertAnswer
from webhook.settings import ReceiverSettings
from webhook.store import ReceiverStore

logger = logging.getLogger("upsell.receiver")

#: Decides one spooled alert (`AlertDispatcher.decide` with from_spool=True); a queued answer stops its account.
Decide = Callable[[UsageAlert], Awaitable[AlertAnswer]]


class Spool:
    """Replays the spool in the background, oldest first, and applies pending unsubscribes."""

    def __init__(self, settings: ReceiverSettings, store: ReceiverStore, gateway: PrefectGateway) -> None:
        self.settings = settings
        self.store = store
        self.gateway = gateway
        self._wake = asyncio.Event()
        self._unsubscribes_failing = False

    def put(self, event_id: str, why: str, *, wake: bool) -> None:
        """Queue the accepted alert for replay (one more attempt, `why` as its last error)."""
        row = self.store.get(event_id)
        assert row is not None  # rows are never deleted
        self.store.update(event_id, status="queued", attempts=row["attempts"] + 1, last_error=why)
        if wake and not self.gateway.api_down:
            self._wake.set()

    def wake(self) -> None:
        """Start the next round now (spooled alerts, pending unsubscribes) instead of at the next interval."""
        self._wake.set()

    def start(self, decide: Decide) -> asyncio.Task[None]:
        """Queue again the alerts an earlier process accepted but never decided, and start the replay loop."""
        requeued = self.store.requeue_received()
        if requeued:
            logger.warning("Receiver: %d alert(s) left undecided by the last process; replaying", requeued)
        worker = asyncio.create_task(self.run_forever(decide), name="upsell-spool-dispatcher")
        if self.store.spool_depth():
            logger.info("Receiver: %d spooled alert(s) from before the restart", self.store.spool_depth())
            self.wake()
        return worker

    async def run_forever(self, decide: Decide) -> None:
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
                progress = await self.replay(decide) > 0
                await self.apply_unsubscribes()
            except Exception:
                # the loop must outlive any one failure; the alerts stay in the spool for the next round
                logger.exception("Spool replay failed; retrying in %ss", self.settings.dispatch_interval_s)

    async def replay(self, decide: Decide) -> int:
        """Decide every spooled alert: accounts in parallel, each account's alerts in arrival order, stopping
        an account at the first alert the API still cannot take."""
        rows = self.store.queued(limit=5000)
        if not rows:
            return 0
        if self.gateway.api_down:
            if not await self.gateway.probe():
                return 0
            logger.info("Prefect API is back; replaying %d spooled alert(s)", self.store.spool_depth())
        by_account: dict[str, list[UsageAlert]] = {}
        for row in rows:
            by_account.setdefault(row["account_id"], []).append(UsageAlert.model_validate_json(row["payload"]))
        gate = asyncio.Semaphore(self.settings.replay_concurrency)

        async def replay_account(alerts: list[UsageAlert]) -> int:
            done = 0
            async with gate:
                for alert in alerts:
                    try:
                        if self.gateway.api_down or (await decide(alert)).queued:
                            break
                    except Exception as exc:  # this account waits (in order); the other accounts go on
                        logger.exception("Replaying alert %s failed; it stays in the spool", alert.event_id)
                        self.put(alert.event_id, f"replay failed: {type(exc).__name__}", wake=False)
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
        if not pending or (timeout_s is not None and self.gateway.api_down):
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
        suppressions = resolve_via_api("store", self.settings)  # the saved store block, or the local stand-in
        try:
            for row in pending:
                suppressions.add_suppression(row["email"], "one-click unsubscribe")
                self.store.mark_unsubscribe_applied(row["token_hash"])
        finally:
            suppressions.close()
        return len(pending)
