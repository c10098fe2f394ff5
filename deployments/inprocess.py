"""Runs served flow runs in threads of the serving process instead of one new Python process per run.

Prefect's runner starts every flow run, and every resume of a suspended run, as a fresh interpreter that
imports Prefect and the project again (about 1.5 s of CPU here). An upsell spends its life waiting: each
step between waits is a few API calls, so on a small machine that import dominates, and a burst of alerts
or replies queues behind it. `InProcessRunner` keeps Prefect's runner (polling, Pending/Submitting states,
concurrency limit, heartbeats, cancellation observer) and swaps only how a run of a flow it serves is
started: `run_flow` in a worker thread of this process, where Prefect and the flows are already imported.

A waiting run still holds nothing: `suspend_flow_run` ends the thread, and the resume is a new thread.
What threads give up against processes: a crash that kills the interpreter takes every running run with
it (they stay Running unless flow-run heartbeats are on, PREFECT_FLOWS_HEARTBEAT_FREQUENCY), and cancelling a
run that is executing a step stops it at its next Python instruction (an exception raised in the thread)
rather than by a signal. `python -m deployments.serve --processes` keeps Prefect's default.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field
from signal import SIGTERM
from typing import Any
from uuid import UUID

import anyio
import anyio.abc
from prefect.client.schemas.objects import FlowRun
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import Abort, Pause, TerminationSignal
from prefect.flow_engine import run_flow
from prefect.flows import Flow
from prefect.logging import get_logger
from prefect.runner import Runner
from prefect.runner._process_manager import ProcessHandle, ProcessTerminationScope

logger = get_logger("upsell.inprocess")


class _SharedVerifiedContexts:
    """Stands in for the `ssl` module inside `prefect.client.orchestration` only.

    Prefect builds a new `SSLContext` for every API client, parsing the whole CA bundle again (about 30 ms
    of CPU), even for an `http://` API; a flow run creates several clients (the engine's, the suspension
    observer's, block loads). In a process that runs many flow runs that was a third of the runner's CPU.
    Verified contexts (`create_default_context(cafile=...)`) are shared per CA file: Prefect never modifies
    them after creation. The unverified one (PREFECT_API_TLS_INSECURE_SKIP_VERIFY) is modified after
    creation, so it is still built each time. Upstream: PrefectHQ/prefect#19106 (custom SSL contexts).
    """

    def __init__(self, module: Any) -> None:
        self._ssl = module
        self._verified: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ssl, name)

    def create_default_context(self, *args: Any, cafile: str | None = None, **kwargs: Any) -> Any:
        if args or kwargs or not cafile:
            return self._ssl.create_default_context(*args, cafile=cafile, **kwargs)
        with self._lock:
            if cafile not in self._verified:
                self._verified[cafile] = self._ssl.create_default_context(cafile=cafile)
            return self._verified[cafile]


def share_prefect_ssl_contexts() -> None:
    """Make this process's Prefect API clients share one verified SSL context (see `_SharedVerifiedContexts`)."""
    import ssl

    import prefect.client.orchestration as orchestration

    if orchestration.ssl is ssl:
        orchestration.ssl = _SharedVerifiedContexts(ssl)  # type: ignore[assignment]


@dataclass
class FlowRunThread:
    """What Prefect's process bookkeeping needs from a "process": a pid, an exit code, a way to stop it."""

    thread_id: int | None = None
    returncode: int | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def pid(self) -> int | None:
        # The process manager only kills through the termination scope below, which ignores the value.
        return self.thread_id if self.returncode is None else None


class ThreadStopped(TerminationSignal):
    """TerminationSignal raised inside a flow-run thread (the engine handles it as it handles SIGTERM)."""

    def __init__(self, signal: int = SIGTERM) -> None:
        super().__init__(signal)


class ThreadTerminationScope(ProcessTerminationScope):
    """Stops a flow-run thread by raising TerminationSignal in it (the engine then records the end)."""

    wait_after_graceful_kill = True

    def __init__(self, thread: FlowRunThread) -> None:
        self._thread = thread

    def is_alive(self, pid: int) -> bool:
        return not self._thread.done.is_set()

    def graceful_kill(self, pid: int) -> None:
        if self._thread.thread_id is not None and not self._thread.done.is_set():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._thread.thread_id), ctypes.py_object(ThreadStopped)
            )

    def hard_kill(self, pid: int) -> None:
        self.graceful_kill(pid)

    def close(self) -> None:
        return None


class InProcessStarter:
    """A `ProcessStarter` (Prefect's runner protocol) that runs the flow in a thread of this process."""

    def __init__(self, flow: Flow[..., Any], limiter: anyio.CapacityLimiter) -> None:
        self._flow = flow
        self._limiter = limiter

    async def start(
        self, flow_run: FlowRun, task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        thread = FlowRunThread()
        task_status.started(ProcessHandle(thread, ThreadTerminationScope(thread)))  # type: ignore[arg-type]
        thread.returncode = await anyio.to_thread.run_sync(self._run, flow_run, thread, limiter=self._limiter)

    def _run(self, flow_run: FlowRun, thread: FlowRunThread) -> int:
        """0 when the engine recorded how the run ended (final, suspended, aborted), 1 when it could not."""
        thread.thread_id = threading.get_ident()
        try:
            run_flow(self._flow, flow_run=flow_run, return_type="state")
            return 0
        except (Pause, Abort) as exc:  # the engine already set Suspended/Paused, or the server refused the run
            logger.info("Flow run %s: %s", flow_run.id, "suspended" if isinstance(exc, Pause) else "aborted")
            return 0
        except TerminationSignal:  # cancelled through ThreadTerminationScope: the runner records Cancelled
            logger.info("Flow run %s was stopped by the runner", flow_run.id)
            return 0
        except BaseException:  # noqa: BLE001 - the runner proposes Crashed for a non-zero code; nothing is hidden
            logger.exception("Flow run %s ended without a final state", flow_run.id)
            return 1
        finally:
            thread.done.set()


class InProcessRunner(Runner):
    """Prefect's `Runner`, with the runs of the flows given to `add_served` started by `InProcessStarter`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.served_flows: dict[UUID, Flow[..., Any]] = {}

    def add_served(self, deployment: RunnerDeployment, flow: Flow[..., Any]) -> UUID:
        """Register `deployment` with the API (as `add_deployment`) and run its flow runs in threads."""
        deployment_id = self.add_deployment(deployment)
        assert isinstance(deployment_id, UUID)  # called from sync code: never a coroutine
        self.served_flows[deployment_id] = flow
        return deployment_id

    async def __aenter__(self) -> InProcessRunner:
        share_prefect_ssl_contexts()
        await super().__aenter__()
        limiter = anyio.CapacityLimiter(self.limit or 1000)
        poller = self._scheduled_run_poller
        prefect_starter = poller._resolve_starter

        def resolve_starter(flow_run: FlowRun) -> Any:
            flow = self.served_flows.get(flow_run.deployment_id) if flow_run.deployment_id else None
            return InProcessStarter(flow, limiter) if flow is not None else prefect_starter(flow_run)

        poller._resolve_starter = resolve_starter
        return self
