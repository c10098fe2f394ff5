"""Reading upsell flow runs and their flow run inputs through Prefect's client, past the API's page size."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.runtime import flow_run

PAGE = 200  # the API answers at most this many runs per call


def upsell_runs(
    client: SyncPrefectClient,
    types: list[StateType],
    ids: list[UUID] | None = None,
    *,
    limit: int | None = None,
    sort: FlowRunSort | None = None,
    ended_after: datetime | None = None,
) -> list[FlowRun]:
    """The upsell runs in one of `types` (optionally only these ids, or ended after a time), at most `limit`."""
    runs: list[FlowRun] = []
    state = FlowRunFilterState(type=FlowRunFilterStateType(any_=types))
    run_filter = FlowRunFilter(
        state=state,
        id=FlowRunFilterId(any_=ids) if ids else None,
        end_time=FlowRunFilterEndTime(after_=ended_after) if ended_after else None,
    )
    while limit is None or len(runs) < limit:
        size = PAGE if limit is None else min(PAGE, limit - len(runs))
        page = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["upsell"])),
            flow_run_filter=run_filter,
            sort=sort,
            limit=size,
            offset=len(runs),
        )
        runs.extend(page)
        if len(page) < size:
            break
    return runs


def read_run_input(client: SyncPrefectClient, run_id: UUID, key: str) -> str | None:
    """The flow run input stored under `key`, or None when there is none (the sync client answers a 404)."""
    try:
        return client.read_flow_run_input(run_id, key)
    except ObjectNotFound:
        return None
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code == 404:
            return None
        raise


def record_on_this_run(tags: list[str], parameters: dict[str, Any]) -> None:
    """Add `tags` and `parameters` to the current flow run (what it decided once running, e.g. its playbook), so the
    Prefect UI filters and shows it and a resumed run reads the same choice; nothing outside a flow run."""
    run_id = flow_run.get_id()
    if not run_id:
        return
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(str(run_id)))
        new_tags = sorted(set(run.tags) | set(tags))
        new_parameters = {**run.parameters, **parameters}
        if new_tags != sorted(run.tags) or new_parameters != run.parameters:
            client.update_flow_run(run.id, tags=new_tags, parameters=new_parameters)
