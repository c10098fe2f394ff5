"""Bookkeeping for the flow's waits (customer reply, approvals), kept as one flow run input per wait: its
deadline, so that the `reply-timeouts` sweep can find and close the ones nobody answered in time, and the
results of the steps done before it, so that a resumed run picks them up in the same read instead of
replaying each step as a (cached) task run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.client.schemas.objects import FlowRunInput
from prefect.exceptions import ObjectAlreadyExists, PrefectHTTPStatusError
from prefect.input import create_flow_run_input, filter_flow_run_input, read_flow_run_input
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from flows.models import WaitKind


class WaitDeadline(BaseModel):
    """When a wait of a flow run expires and is closed by the sweep; what the run had done when it opened it."""

    kind: str
    deadline: datetime
    steps: dict[str, Any] = Field(default_factory=dict, description="Step name -> its result (JSON).")


def deadline_key(kind: str) -> str:
    return f"upsell-deadline-{kind}"


def opened_waits() -> dict[str, WaitDeadline]:
    """The waits this flow run has opened so far (in earlier segments, when it is a resumed run), oldest first."""
    inputs: list[FlowRunInput] = filter_flow_run_input(key_prefix=deadline_key(""), limit=50)  # type: ignore[assignment]
    records = sorted(inputs, key=lambda i: i.created or datetime.min.replace(tzinfo=UTC))
    return {i.key.removeprefix(deadline_key("")): WaitDeadline.model_validate_json(i.value) for i in records}


def open_wait(kind: WaitKind, timeout_s: float, steps: dict[str, Any] | None = None) -> WaitDeadline:
    """Record the wait's deadline (and the step results so far) on the flow run, once: a resumed run keeps the
    first record."""
    deadline = WaitDeadline(
        kind=kind, deadline=datetime.now(UTC) + timedelta(seconds=timeout_s), steps=dict(steps or {})
    )
    try:
        create_flow_run_input(key=deadline_key(kind), value=deadline.model_dump(mode="json"))
    except (ObjectAlreadyExists, PrefectHTTPStatusError) as exc:
        if isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code != 409:
            raise
        existing = read_flow_run_input(key=deadline_key(kind), flow_run_id=UUID(str(flow_run.get_id())))
        return WaitDeadline.model_validate(existing)
    return deadline
