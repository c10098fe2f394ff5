"""The in-process runner's flow-run threads: a suspension requested from outside (the UI or the API) stops an
executing run through the one observer the serving process shares, not a per-run subscription."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import prefect.flow_engine
import pytest
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.flow_runs import suspend_flow_run

from deployments.inprocess import InProcessStarter, SharedSuspensionObserver

TICKS: dict[str, int] = {}


@task(cache_policy=NO_CACHE)
def tick(marker: str) -> None:
    TICKS[marker] = TICKS.get(marker, 0) + 1


@flow(persist_result=True)
def ticking(marker: str, ticks: int = 600) -> int:
    for _ in range(ticks):
        tick(marker)
        time.sleep(0.05)
    return ticks


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop in a thread of its own, as the runner's."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def on(loop: asyncio.AbstractEventLoop, coro: Any, timeout: float = 60) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_an_outside_suspension_stops_an_in_thread_run_through_the_shared_observer(loop):
    marker = uuid.uuid4().hex
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(ticking)
        deployment_id = client.create_deployment(flow_id=flow_id, name=f"inprocess-{marker[:8]}")
        flow_run = client.create_flow_run_from_deployment(deployment_id, parameters={"marker": marker})

    prefects_own = prefect.flow_engine.observe_flow_run_suspension
    observer = SharedSuspensionObserver()
    on(loop, observer.__aenter__())
    try:
        assert prefect.flow_engine.observe_flow_run_suspension == observer.observe

        async def start() -> None:
            await InProcessStarter(ticking, anyio.CapacityLimiter(4), observer).start(flow_run)

        finished = asyncio.run_coroutine_threadsafe(start(), loop)
        wait_until(lambda: flow_run.id in observer.watched and TICKS.get(marker, 0) >= 3, 60, "the run to tick")

        suspend_flow_run(flow_run_id=flow_run.id, timeout=600)
        finished.result(timeout=60)  # the thread ended: the engine stopped at its next task
        ticks = TICKS[marker]
        time.sleep(0.5)
        assert TICKS[marker] == ticks < 600
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run.id).state
        assert state is not None and state.is_paused() and state.name == "Suspended"
        assert flow_run.id not in observer.watched  # released when the run's thread ended
    finally:
        on(loop, observer.__aexit__(None, None, None))
    assert prefect.flow_engine.observe_flow_run_suspension is prefects_own
