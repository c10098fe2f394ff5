"""The receiver's calls to the Prefect API, each bounded in time, and whether the API is reachable: a call
that cannot get through raises PrefectUnavailable, and the alert it was for goes to the spool."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterIdempotencyKey,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import ArtifactSort
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.input import keyset_from_paused_state
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Suspended

from blocks.registry import resolve
from flows.api import create_upsell_run, deployment_id_for, resume_wait
from flows.models import REPLY_WAITS, STAGE_ORDER, UsageAlert, automation_level_for, metric_label
from flows.playbooks import Playbook
from tasks.content.untrusted import clean_name
from tasks.recover_runs import awaits_heartbeat, heartbeat_filter, stalled
from tasks.runtime.waits import WaitDeadline, deadline_key
from webhook.models import RunSummary
from webhook.settings import ReceiverSettings

logger = logging.getLogger("upsell.receiver")
T = TypeVar("T")

#: The longest a link page waits for what the run says about itself; after that it is shown in general words.
SUMMARY_TIMEOUT_S = 2.0


def resolve_via_api(service: str, settings: ReceiverSettings) -> Any:
    """The client of `service` (blocks.registry.resolve), its block looked up on the receiver's Prefect API."""
    url = settings.prefect_api_url
    with temporary_settings(updates={PREFECT_API_URL: url} if url else {}):
        return resolve(service, settings).client


class PrefectUnavailable(Exception):
    """The Prefect API could not be reached (or cannot create the run yet): the alert goes to the spool."""


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, (httpx.TransportError, TimeoutError, OSError)):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code in (408, 429)
    return False


def attached_key(event_id: str) -> str:
    """The flow run input key of an alert attached to an open run: Prefect keys allow only [a-z0-9-], so the
    event id is slugged and a short hash of it keeps ids that slug alike apart."""
    slug = re.sub(r"[^a-z0-9]+", "-", event_id.lower()).strip("-")[:150]
    return f"upsell-attached-{slug}-{hashlib.sha256(event_id.encode()).hexdigest()[:8]}"


def _dig(data: Any, *path: str) -> Any:
    """`data[path[0]][path[1]]...`, or None where a level is missing or not a mapping (run data may be odd)."""
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _text(value: Any, field: str) -> str:
    """A text of the run cleaned as outgoing text (`clean_name`), or "" when it is not a text at all."""
    return clean_name(value, field) if isinstance(value, str) else ""


def summary_from(parameters: dict[str, Any], records: list[str]) -> RunSummary:
    """The summary of an upsell run from its parameters (the alert) and its wait records, whose step results
    hold the contract and the plan (`tasks.runtime.waits`). What is missing or unsafe stays empty."""
    steps: dict[str, Any] = {}
    for record in records:
        try:
            steps.update(WaitDeadline.model_validate_json(record).steps)
        except ValueError:  # not a record of ours: the rest of the summary still helps
            continue
    metric = _dig(parameters, "alert", "metric_type")
    value = _dig(steps, "plan", "plan", "estimated_value")
    return RunSummary(
        account_id=_text(_dig(parameters, "alert", "account_id"), "company_name"),
        metric=_text(metric_label(metric), "metric") if isinstance(metric, str) else "",
        recommended_plan=_text(_dig(steps, "plan", "plan", "recommended_plan"), "recommended_plan"),
        current_plan=_text(_dig(steps, "contract", "current_plan"), "current_plan"),
        company_name=_text(_dig(steps, "contract", "company_name"), "company_name"),
        estimated_value=float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None,
    )


class PrefectGateway:
    """The Prefect API as the receiver uses it; `api_down` is set while the API does not answer at all."""

    def __init__(self, settings: ReceiverSettings, client: PrefectClient, api_url: str) -> None:
        self.settings = settings
        self.client = client
        self.api_url = api_url
        self.api_down = False
        self._deployment_id: UUID | None = None

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

    async def probe(self) -> bool:
        """Whether the API answers its health check; sets or clears `api_down` accordingly."""
        try:
            async with asyncio.timeout(self.settings.prefect_timeout_s):
                error: Exception | None = await self.client.api_healthcheck()
        except TimeoutError as exc:
            error = exc
        self.api_down = error is not None
        return error is None

    async def create_run(self, alert: UsageAlert, playbook: Playbook | None) -> FlowRun:
        """The alert's upsell run (Prefect's idempotency key upsell:<event_id> makes a replay find the same run),
        with its playbook and level when the alert decides them (`PlaybookFile.on_alert`); else the run decides."""
        level = None
        if playbook is not None:
            level = playbook.automation_level or automation_level_for(alert.severity, self.settings.severity_levels)
        try:
            if self._deployment_id is None:  # looked up once, not once per alert
                self._deployment_id = await self.call(
                    lambda: deployment_id_for(self.client, self.settings.deployment_name))
            deployment_id = self._deployment_id
            return await self.call(lambda: create_upsell_run(
                self.client, alert, level, deployment_name=self.settings.deployment_name,
                deployment_id=deployment_id, playbook=playbook.name if playbook else None))
        except ObjectNotFound as exc:
            # not a bad alert: the deployment is not registered (yet), or was re-created under a new id;
            # keep the alert until it is there, and look the id up again
            self._deployment_id = None
            raise PrefectUnavailable(f"deployment {self.settings.deployment_name} not found") from exc

    async def record_on_run(self, flow_run_id: str, alert: UsageAlert) -> None:
        """Keep the attached alert on the open run itself, as a flow run input (`attached_key(event id)`)."""
        try:
            await self.call(lambda: self.client.create_flow_run_input(
                UUID(flow_run_id), key=attached_key(alert.event_id), value=alert.model_dump_json()))
        except ObjectAlreadyExists:  # a replay of the same alert: already recorded
            pass

    async def read_run(self, flow_run_id: str) -> FlowRun:
        return await self.call(lambda: self.client.read_flow_run(UUID(flow_run_id)))

    async def dead_reason(self, run: FlowRun) -> str | None:
        """Why a run that is not final will not go on by itself, or None if it is alive: the recovery sweep's
        signs (`tasks.recover_runs`) over `dead_after_s`. A waiting run is alive: it holds no process."""
        after = self.settings.dead_after_s
        stale = datetime.now(UTC) - timedelta(seconds=after)
        silent = False
        if awaits_heartbeat(run, stale):
            page = await self.call(lambda: self.client.read_events(filter=heartbeat_filter([run], stale), limit=1))
            silent = not page.events
        dead = stalled(run, after, stale, silent=silent)
        return None if dead is None else dead.detail

    async def run_for_event(self, event_id: str) -> str | None:
        """The id of the upsell run of an event (by the idempotency key every trigger uses), or None."""
        runs = await self.call(lambda: self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(idempotency_key=FlowRunFilterIdempotencyKey(any_=[f"upsell:{event_id}"])),
            limit=1,
        ))
        return str(runs[0].id) if runs else None

    async def resume_wait(self, flow_run_id: str, wait: str, run_input: dict[str, Any]) -> None:
        """Answer the run's `wait` (NotWaitingError when it is not in that wait)."""
        await self.call(lambda: resume_wait(self.client, flow_run_id, wait, run_input))

    async def run_stage(self, run: FlowRun, alert: UsageAlert) -> str | None:
        """The stage the alert's run reached: the latest of its stage event (emitted the moment a stage is
        reached, stored a moment later) and its artifact (republished at each wait and at the end, as
        "Upsell <a>/<e>: <stage>")."""
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
        stages = [str(e.payload.get("stage")) for e in events.events[:1]]
        stages += [a.description.rsplit(": ", 1)[-1] for a in artifacts[:1] if a.description]
        order = {stage.value: i for i, stage in enumerate(STAGE_ORDER)}
        known = [stage for stage in stages if stage in order]
        return max(known, key=order.__getitem__) if known else None

    async def link_closed(self, flow_run_id: str, wait: str) -> str | None:
        """Why a link answering the run's `wait` can no longer be used, before anyone presses its button:
        "answered" (an answer to that wait is stored: for the customer's reply, to either reply wait), "ended"
        (the run finished), or None (it may still be used, or that could not be read in time)."""
        waits = REPLY_WAITS if wait in REPLY_WAITS else (wait,)
        try:
            run_id = UUID(flow_run_id)
            async with asyncio.timeout(min(self.settings.prefect_timeout_s, SUMMARY_TIMEOUT_S)):
                run = await self.client.read_flow_run(run_id)
                state = run.state
                if state is not None and state.is_paused() and state.state_details.pause_key in waits:
                    return None  # waiting for this very answer (again, after a recovery)
                for kind in waits:
                    key = keyset_from_paused_state(Suspended(pause_key=kind))["response"]
                    try:
                        await self.client.read_flow_run_input(run_id, key)
                    except ObjectNotFound:
                        continue
                    return "answered"
        # degrade on purpose: this only spares the customer a button that would refuse; the POST decides anyway
        except Exception as exc:
            logger.info("Link page for flow run %s shown without its answer check (%s: %s)", flow_run_id,
                        type(exc).__name__, exc)
            return None
        # a Crashed run is not over: the recovery sweep runs it again and it waits for the answer again
        ended = state is not None and (state.is_completed() or state.is_failed() or state.is_cancelled())
        return "ended" if ended else None

    async def run_summary(self, flow_run_id: str) -> RunSummary:
        """What a link page says about its upsell (plan, account, metric), read from the run; an empty summary
        when the API is slow or down or the run is gone."""
        try:
            run_id = UUID(flow_run_id)
            async with asyncio.timeout(min(self.settings.prefect_timeout_s, SUMMARY_TIMEOUT_S)):
                run, records = await asyncio.gather(
                    self.client.read_flow_run(run_id),
                    self.client.filter_flow_run_input(run_id, key_prefix=deadline_key(""), limit=20,
                                                      exclude_keys=set()),
                )
        # degrade on purpose: the summary only adds context to a page that works without it, so no failure of
        # the API (down, slow, an error answer, a deleted run) may turn the page into an error
        except Exception as exc:
            logger.info("Link page for flow run %s shown without its details (%s: %s)", flow_run_id,
                        type(exc).__name__, exc)
            return RunSummary()
        return summary_from(run.parameters, [record.value for record in records])
