"""Bookkeeping for the flow's waits (customer reply, approvals): their deadlines, kept as flow run inputs so
that the `reply-timeouts` sweep can find and close the ones nobody answered in time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from prefect.client.schemas.objects import FlowRunInput
from prefect.exceptions import ObjectAlreadyExists, PrefectHTTPStatusError
from prefect.input import create_flow_run_input, filter_flow_run_input, read_flow_run_input
from prefect.runtime import flow_run
from pydantic import BaseModel

from flows.models import WaitKind


class WaitDeadline(BaseModel):
    """When a wait of a flow run expires and is closed by the sweep."""

    kind: str
    deadline: datetime


def deadline_key(kind: str) -> str:
    return f"upsell-deadline-{kind}"


def opened_waits() -> set[str]:
    """Kinds of the waits this flow run has opened so far (in earlier segments, when it is a resumed run)."""
    inputs: list[FlowRunInput] = filter_flow_run_input(key_prefix=deadline_key(""), limit=50)  # type: ignore[assignment]
    return {i.key.removeprefix(deadline_key("")) for i in inputs}


def open_wait(kind: WaitKind, timeout_s: float) -> WaitDeadline:
    """Record the wait's deadline on the flow run (once; a resumed run keeps the first deadline)."""
    deadline = WaitDeadline(kind=kind, deadline=datetime.now(UTC) + timedelta(seconds=timeout_s))
    try:
        create_flow_run_input(key=deadline_key(kind), value=deadline.model_dump(mode="json"))
    except (ObjectAlreadyExists, PrefectHTTPStatusError) as exc:
        if isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code != 409:
            raise
        existing = read_flow_run_input(key=deadline_key(kind), flow_run_id=UUID(str(flow_run.get_id())))
        return WaitDeadline.model_validate(existing)
    return deadline
