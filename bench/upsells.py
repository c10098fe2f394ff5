"""What the crash benchmarks share: a Prefect server of their own, a batch of FULL_AUTOMATION upsells, and a customer
who answers "yes"."""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deployments.stack import Stack, ensure_prefect_server
from webhook.ports import free_port


@contextmanager
def own_prefect_server(name: str) -> Iterator[tuple[Path, Stack, str]]:
    """A new work folder, a `Stack` that stops by PID every process started on it, and a Prefect server of the
    bench's own on a free port, which this process's Prefect clients use: (work folder, stack, API URL)."""
    work = Path(tempfile.mkdtemp(prefix=f"upsell-{name}-"))
    os.environ["PREFECT_HOME"] = str(work / "prefect-home")
    stack = Stack(log_dir=work / "logs")
    try:
        api_url, _ = ensure_prefect_server(stack, port=free_port())
        os.environ["PREFECT_API_URL"] = api_url
        yield work, stack, api_url
    finally:
        stack.stop()


def state_label(state: Any) -> str:
    """A run's state for the figures: "Completed" for every finished upsell (whose state is named for its outcome:
    Won, Declined, ...), else the state's name ("?" when it has none yet)."""
    if state is None:
        return "?"
    return "Completed" if state.is_completed() else str(state.name)


def create_upsells(prefix: str, n: int) -> tuple[list[Any], list[str]]:
    """`n` upsell runs of the served `upsell/upsell` deployment, one fresh account each: (alerts, run ids)."""
    from prefect.client.orchestration import get_client

    from flows.api import create_upsell_run
    from flows.models import AutomationLevel, UsageAlert

    batch = f"{int(time.time())}"
    alerts = [
        UsageAlert(event_id=f"{prefix}-{batch}-{i:03d}", account_id=f"{prefix}-{batch}-{i:03d}",
                   metric_type="trade_volume", current_value=150, threshold=100, severity="critical")
        for i in range(n)
    ]  # fmt: skip

    async def create_all() -> list[str]:
        async with get_client() as client:
            return [str((await create_upsell_run(client, a, AutomationLevel.FULL_AUTOMATION)).id) for a in alerts]

    return alerts, asyncio.run(create_all())


def upsell_runs_among(client: Any, run_ids: list[str]) -> list[Any]:
    """The current records of these upsell runs (one request)."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["upsell"])), limit=200)
    return [r for r in runs if str(r.id) in run_ids]


def answer_yes_until(stop: threading.Event, run_ids: list[str]) -> threading.Thread:
    """A thread that answers "yes" to every reply wait of these runs every 2 s, until `stop` is set."""
    from prefect.client.orchestration import get_client

    def answer() -> None:
        with get_client(sync_client=True) as client:
            while not stop.is_set():
                try:
                    for run in upsell_runs_among(client, run_ids):
                        if run.state and run.state.is_paused() and run.state.state_details.pause_key == "reply":
                            client.resume_flow_run(run.id, run_input={"reply": "yes"})
                except Exception as exc:  # noqa: BLE001 - the API is busy; the next pass tries again
                    print(f"  (answering: {type(exc).__name__})")
                stop.wait(2)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread
