"""Bookkeeping for the flow's waits (customer reply, approvals): their deadlines, kept as flow run inputs so
that the `reply-timeouts` sweep can find and close the ones nobody answered in time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from prefect import task
from prefect.exceptions import ObjectAlreadyExists
from prefect.input import create_flow_run_input, read_flow_run_input
from prefect.runtime import flow_run
from pydantic import BaseModel

from flows.models import WaitKind
from tasks.policy import FETCH_TIMEOUT_S, step_options


class WaitDeadline(BaseModel):
    """When a wait of a flow run expires and is closed by the sweep."""

    kind: str
    deadline: datetime


def deadline_key(kind: str) -> str:
    return f"upsell-deadline-{kind}"


@task(name="open_wait", **step_options(FETCH_TIMEOUT_S))
def open_wait(kind: WaitKind, timeout_s: float) -> WaitDeadline:
    """Record the wait's deadline on the flow run (once; a resumed run keeps the first deadline)."""
    deadline = WaitDeadline(kind=kind, deadline=datetime.now(UTC) + timedelta(seconds=timeout_s))
    try:
        create_flow_run_input(key=deadline_key(kind), value=deadline.model_dump(mode="json"))
    except ObjectAlreadyExists:
        existing = read_flow_run_input(key=deadline_key(kind), flow_run_id=UUID(str(flow_run.get_id())))
        return WaitDeadline.model_validate(existing)
    return deadline
