"""The Python API of the reference design, on Prefect: trigger an upsell, answer its waits.

`trigger_upsell_workflow` creates a run of the `upsell` deployment once per event id (Prefect idempotency
key); `send_customer_reply` and `resume_wait` resume a waiting run with typed input.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import SetStateStatus
from pydantic import ValidationError

from flows.models import (
    REPLY_WAITS,
    WAIT_INPUTS,
    AutomationLevel,
    CustomerReply,
    Severity,
    UsageAlert,
)

SCHEMA_WAIT_S = 10.0
DEFAULT_SEVERITY = {
    AutomationLevel.FULL_AUTOMATION: Severity.CRITICAL,
    AutomationLevel.HYBRID: Severity.HIGH,
    AutomationLevel.HUMAN_INTERVENTION: Severity.LOW,
}


class UpsellRequestError(ValueError):
    """Arguments that cannot make a valid upsell request; nothing was sent to Prefect."""


class NotWaitingError(RuntimeError):
    """The flow run is not waiting for this input (already answered, finished, or another wait)."""


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = ".".join(str(p) for p in error["loc"]) or "value"
    return f"{field}: {error['msg']}"


def build_alert(
    account_id: str, event_id: str, metric_type: str, automation_level: AutomationLevel | str, **fields: Any
) -> tuple[UsageAlert, AutomationLevel]:
    """Validate the arguments of a trigger into an alert and a level, or raise UpsellRequestError."""
    try:
        level = AutomationLevel(automation_level)
    except ValueError:
        choices = ", ".join(level.value for level in AutomationLevel)
        raise UpsellRequestError(f"automation_level: {automation_level!r} is not one of {choices}") from None
    fields = {k: v for k, v in fields.items() if v is not None}
    fields.setdefault("severity", DEFAULT_SEVERITY[level])
    try:
        alert = UsageAlert(account_id=account_id, event_id=event_id, metric_type=metric_type, **fields)
    except ValidationError as exc:
        raise UpsellRequestError(_first_error(exc)) from None
    return alert, level


def run_tags(alert: UsageAlert, level: AutomationLevel | None, playbook: str | None = None) -> list[str]:
    """Tags that let the Prefect UI filter upsells by account, metric, automation level and playbook (a level or a
    playbook the run decides once it has the contract is tagged by the run then)."""
    tags = [f"account:{alert.account_id}", f"metric:{alert.metric_type}"]
    tags += [f"level:{level.value}"] if level is not None else []
    tags += [f"playbook:{playbook}"] if playbook is not None else []
    return [*tags, "upsell"]


async def deployment_id_for(client: PrefectClient, deployment_name: str = "upsell/upsell") -> UUID:
    """The id of the named deployment (ObjectNotFound when it is not registered)."""
    return (await client.read_deployment_by_name(deployment_name)).id


async def create_upsell_run(
    client: PrefectClient,
    alert: UsageAlert,
    level: AutomationLevel | None,
    *,
    deployment_name: str = "upsell/upsell",
    deployment_id: UUID | None = None,
    reply_timeout_s: float | None = None,
    approval_timeout_s: float | None = None,
    playbook: str | None = None,
) -> FlowRun:
    """Create (or find, for a repeated event id) the deployment run of this alert.

    A caller that creates many runs passes the `deployment_id` it looked up once (`deployment_id_for`). Without a
    level or a playbook, the run decides them itself from the playbooks once it has the account's contract.
    """
    if deployment_id is None:
        deployment_id = await deployment_id_for(client, deployment_name)
    parameters: dict[str, Any] = {"alert": alert.model_dump(mode="json")}
    if level is not None:
        parameters["automation_level"] = level.value
    if playbook is not None:
        parameters["playbook"] = playbook
    if reply_timeout_s is not None:
        parameters["reply_timeout_s"] = reply_timeout_s
    if approval_timeout_s is not None:
        parameters["approval_timeout_s"] = approval_timeout_s
    return await client.create_flow_run_from_deployment(
        deployment_id,
        parameters=parameters,
        name=alert.run_name,  # the name the run keeps (the flow's run name), shown from the start
        idempotency_key=f"upsell:{alert.event_id}",
        tags=run_tags(alert, level, playbook),
    )


async def trigger_upsell_workflow(
    client: PrefectClient,
    account_id: str,
    event_id: str,
    automation_level: AutomationLevel | str,
    metric_type: str,
    *,
    current_value: float | None = None,
    threshold: float | None = None,
    severity: Severity | str | None = None,
    occurred_at: datetime | None = None,
    context: dict[str, Any] | None = None,
    deployment_name: str = "upsell/upsell",
    reply_timeout_s: float | None = None,
    approval_timeout_s: float | None = None,
) -> UUID:
    """Start the upsell for one event (once per event id) and return its flow run id."""
    alert, level = build_alert(
        account_id,
        event_id,
        metric_type,
        automation_level,
        current_value=current_value,
        threshold=threshold,
        severity=severity,
        occurred_at=occurred_at,
        context=context,
    )
    run = await create_upsell_run(
        client,
        alert,
        level,
        deployment_name=deployment_name,
        reply_timeout_s=reply_timeout_s,
        approval_timeout_s=approval_timeout_s,
    )
    return run.id


def validate_wait_input(kind: str, run_input: dict[str, Any]) -> dict[str, Any]:
    """The input checked against the wait's model (raises UpsellRequestError naming the field)."""
    model = WAIT_INPUTS.get(kind)
    if model is None:
        raise UpsellRequestError(f"wait: {kind!r} is not one of {', '.join(WAIT_INPUTS)}")
    try:
        return model.model_validate(run_input).model_dump(mode="json")
    except ValidationError as exc:
        raise UpsellRequestError(_first_error(exc)) from None


async def waiting_for(client: PrefectClient, flow_run_id: UUID | str) -> str | None:
    """The kind of wait the run is in (its pause key), or None when it is not waiting."""
    run = await client.read_flow_run(UUID(str(flow_run_id)))
    if run.state is None or not run.state.is_paused():
        return None
    return run.state.state_details.pause_key


async def resume_wait(client: PrefectClient, flow_run_id: UUID | str, kind: str, run_input: dict[str, Any]) -> None:
    """Resume the run's `kind` wait with typed input; NotWaitingError when it is not in that wait."""
    current = await waiting_for(client, flow_run_id)
    if kind in REPLY_WAITS and current in REPLY_WAITS:  # the customer's answer, before or after the follow-up
        kind = current
    checked = validate_wait_input(kind, run_input)
    if current != kind:
        raise NotWaitingError(
            f"flow run {flow_run_id} is not waiting for {kind!r}"
            + (f" (it waits for {current!r})" if current else " (it is not paused)")
        )
    deadline = time.monotonic() + SCHEMA_WAIT_S
    while True:
        response = await client.resume_flow_run(UUID(str(flow_run_id)), run_input=checked)
        if response.status == SetStateStatus.ACCEPT:
            return
        reason = getattr(response.details, "reason", "") or response.status.value
        # Prefect sets the paused state a moment before it saves the input form's schema: an answer that
        # arrives in between is refused with this reason although the run is waiting. Nothing changed; retry.
        if "schema not found" not in reason.lower() or time.monotonic() > deadline:
            raise NotWaitingError(f"flow run {flow_run_id} could not be resumed: {reason}")
        await asyncio.sleep(0.2)


async def send_customer_reply(client: PrefectClient, flow_run_id: UUID | str, reply: CustomerReply | str) -> None:
    """Resume a run waiting for the customer's reply with `yes`, `no` or `maybe`."""
    try:
        value = CustomerReply(reply)
    except ValueError:
        raise UpsellRequestError(f"reply: {reply!r} is not one of yes, no, maybe, no_reply") from None
    await resume_wait(client, flow_run_id, "reply", {"reply": value.value})
