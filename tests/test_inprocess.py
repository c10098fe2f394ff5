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
from prefect._flow_run_suspension import FlowRunSuspensionRequest
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.flow_runs import suspend_flow_run

from deployments.inprocess import ExecutionSlots, InProcessStarter, SharedSuspensionObserver

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


def test_a_run_goes_on_unobserved_when_the_serving_loop_does_not_answer(loop, caplog):
    observer = SharedSuspensionObserver(watch_start_timeout_s=0.5)
    on(loop, observer.__aenter__())
    busy, loop_ran = threading.Event(), []
    run_id = uuid.uuid4()
    try:
        observer.adopt(run_id)
        loop.call_soon_threadsafe(busy.wait, 60)  # the serving process's loop is stuck for now
        loop.call_soon_threadsafe(loop_ran.append, True)
        with caplog.at_level("WARNING"), observer.observe(run_id, FlowRunSuspensionRequest()):
            assert not loop_ran  # the run went on while the loop was still stuck
            assert run_id not in observer.watched  # unobserved: an outside suspension would go unnoticed
        assert f"Flow run {run_id}: suspension observer not ready" in caplog.text
    finally:
        busy.set()
        observer.release(run_id)
        on(loop, observer.__aexit__(None, None, None))


def _fake_run() -> FlowRun:
    return FlowRun(flow_id=uuid.uuid4(), name=f"slot-{uuid.uuid4().hex[:6]}")


def _enter(slots: ExecutionSlots, run: FlowRun, entered: list[uuid.UUID]) -> threading.Thread:
    """A run's thread reaching Running: it waits in the hook for a slot, then records that it executes."""
    def body() -> None:
        slots.wait_for_slot(None, run, None)
        entered.append(run.id)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def test_execution_slots_let_at_most_size_runs_execute_in_arrival_order():
    slots, entered = ExecutionSlots(2), []
    runs = [_fake_run() for _ in range(4)]
    threads = []
    for run in runs:
        threads.append(_enter(slots, run, entered))
        time.sleep(0.1)
    assert entered == [runs[0].id, runs[1].id] and slots.busy == 2  # the others are Running, queued
    slots.release(runs[0].id)  # a run ended or suspended
    wait_until(lambda: len(entered) == 3, 5, "a queued run to take the slot")
    assert entered[2] == runs[2].id and slots.busy == 2
    slots.release(runs[1].id)
    slots.release(runs[2].id)
    for thread in threads:
        thread.join(timeout=5)
    assert entered == [r.id for r in runs]
    slots.release(runs[3].id)
    assert slots.busy == 0


def test_the_runner_refuses_a_prefect_release_it_was_not_tested_on() -> None:
    from deployments.inprocess import TESTED_PREFECT, UnsupportedPrefect, check_prefect_version

    check_prefect_version(f"{TESTED_PREFECT}9")
    with pytest.raises(UnsupportedPrefect, match="not 3.10.0"):
        check_prefect_version("3.10.0")


def test_the_private_prefect_names_the_runner_uses_still_exist() -> None:
    """Fails loudly on a Prefect upgrade that moves what deployments/inprocess.py relies on."""
    import inspect

    import prefect._flow_run_suspension as suspension
    import prefect._internal.observers as observers
    import prefect.runner._process_manager as process_manager
    from prefect.runner import Runner
    from prefect.runner._scheduled_run_poller import ScheduledRunPoller

    assert callable(suspension.mark_flow_run_suspension_requested) and suspension.FlowRunSuspensionRequest
    assert observers.FlowRunSuspendingObserver and process_manager.ProcessHandle
    assert process_manager.ProcessTerminationScope
    # the runner attributes InProcessRunner.__aenter__ swaps the starter through
    assert "self._scheduled_run_poller = ScheduledRunPoller(" in inspect.getsource(Runner.__aenter__)
    assert "self._resolve_starter = resolve_starter" in inspect.getsource(ScheduledRunPoller.__init__)
    assert hasattr(Runner(limit=1), "_exit_stack")


def test_serving_falls_back_to_prefects_process_runner_when_the_in_process_one_cannot_load() -> None:
    import subprocess
    import sys

    probe = (
        "import sys; sys.modules['deployments.inprocess'] = None; import deployments.serve as serve;"
        " print(serve.InProcessRunner is None, serve.IN_PROCESS_UNAVAILABLE.split(':')[0])"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    unavailable, reason = result.stdout.split()
    assert unavailable == "True" and reason in ("ImportError", "ModuleNotFoundError"), result.stderr[-2000:]


def test_a_run_queued_for_a_slot_keeps_sending_heartbeats(prefect_server: str) -> None:
    """Running but not executing yet: its heartbeats come from the queue, so it is never taken for a dead run."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    slots, entered = ExecutionSlots(1, heartbeat_s=0.3), []
    holder, queued = _fake_run(), _fake_run()
    _enter(slots, holder, entered).join(timeout=5)
    waiting = _enter(slots, queued, entered)
    time.sleep(1.5)
    slots.release(holder.id)
    waiting.join(timeout=5)
    assert entered == [holder.id, queued.id]

    beats: list[Any] = []
    deadline = time.monotonic() + 20
    with get_client(sync_client=True) as client:
        while len(beats) < 2 and time.monotonic() < deadline:  # events are stored a moment after they are sent
            beats = client.read_events(filter=EventFilter(
                event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
                resource=EventResourceFilter(id=[f"prefect.flow-run.{queued.id}"]),
            ), limit=50).events  # fmt: skip
            time.sleep(0.5)
    assert len(beats) >= 2
    assert {r.role for r in beats[0].related} >= {"flow"}
