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

Prefect's engine also opens, for every segment of a deployment run, a thread with its own event loop, API
client and events-stream subscription to notice a suspension requested from outside (the UI, the API). In a
process running hundreds of runs that is hundreds of subscriptions, each replaying the last minute of
`prefect.flow-run.Suspended` events of every run when it opens and receiving each new one. Runs executed here
share one observer instead (`SharedSuspensionObserver`), as Prefect's runner shares one cancellation observer
across its runs.

Admission and execution are bounded separately. The runner's limit caps the runs in flight (threads); of
those, at most `executing` run their flow body at once (`ExecutionSlots`): a run beyond that is Running in
Prefect, its Running hook waits for a slot, in arrival order, and says so in the run's logs. A burst of
alerts no longer waits Scheduled for a free thread, and the API is not flooded by hundreds of flow bodies at
once, which would put every start, resume and create behind them.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from signal import SIGTERM
from typing import Any
from uuid import UUID

import anyio
import anyio.abc
import prefect
import prefect.flow_engine

#: The Prefect release line this module was written and tested against: it is the one module of the project
#: that uses Prefect's private API (the runner's starter hook, its process manager, the suspension observer).
TESTED_PREFECT = "3.9."


class UnsupportedPrefect(ImportError):
    """Another Prefect release: `upsell serve` falls back to Prefect's own process runner."""


def check_prefect_version(version: str) -> None:
    """Refuse a Prefect release this module was not tested against (raised at import)."""
    if not version.startswith(TESTED_PREFECT):
        raise UnsupportedPrefect(
            f"the in-process runner was tested on Prefect {TESTED_PREFECT}x, not {version}; its private API may differ"
        )


check_prefect_version(prefect.__version__)

from prefect._flow_run_suspension import FlowRunSuspensionRequest, mark_flow_run_suspension_requested
from prefect._internal.observers import FlowRunSuspendingObserver
from prefect.client.schemas.objects import FlowRun
from prefect.deployments.runner import RunnerDeployment
from prefect.events import emit_event
from prefect.exceptions import Abort, Pause, TerminationSignal
from prefect.flow_engine import run_flow
from prefect.flows import Flow
from prefect.logging import get_logger
from prefect.runner import Runner
from prefect.runner._process_manager import ProcessHandle, ProcessTerminationScope
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

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


class ThreadTimeoutNotice(logging.Filter):
    """Drops Prefect's warning, logged on every task run executed outside the main thread, that the task's
    timeout cannot interrupt a blocking call there. Every served run executes in a worker thread here, so it
    would be a warning on every step of every run; the runner says it once at start instead. What bounds a hung
    call is that every outside wait of a step (each vendor request, a rate-limit slot) ends, at the latest, with
    the step's timeout (`tasks.policy.request_timeout`).
    """

    PREFIX = "Timeout of %s seconds configured for this task, but the task is running in a worker thread"

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIX)


def quiet_thread_timeout_notices() -> None:
    task_runs = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, ThreadTimeoutNotice) for f in task_runs.filters):
        task_runs.addFilter(ThreadTimeoutNotice())
        logger.info(
            "Flow runs execute in threads: a step's timeout takes effect once its blocking call returns; each"
            " vendor request and rate-limit wait of a step ends with the step's timeout at the latest."
        )


#: Longest a run waits for the shared observer to read its state (the serving process's event loop is busy or
#: stopping); past it the run goes on unobserved rather than hanging.
WATCH_START_TIMEOUT_S = 30.0

SuspensionObserverFactory = Callable[[UUID, FlowRunSuspensionRequest], AbstractContextManager[None]]


class SharedSuspensionObserver:
    """One `FlowRunSuspendingObserver` (one events subscription) for every flow run executing in this process.

    The engine asks `prefect.flow_engine.observe_flow_run_suspension` to watch each deployment run it
    executes; `install` replaces that function with `observe`, which hands runs this process started
    (`adopt`) to the shared observer and leaves any other run to Prefect's own per-run observer. A watched
    run is initialised from its current state (a read, as Prefect's per-run observer does), so a Suspended
    event of an earlier segment is not taken for a new request; a confirmed request is delivered to the
    engine through Prefect's own registry (`mark_flow_run_suspension_requested`).
    """

    def __init__(self, polling_interval: float = 10, watch_start_timeout_s: float = WATCH_START_TIMEOUT_S) -> None:
        self.watch_start_timeout_s = watch_start_timeout_s
        self._observer = FlowRunSuspendingObserver(
            on_suspended=self._on_suspended, polling_interval=polling_interval
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._adopted: set[UUID] = set()
        self._watching: set[UUID] = set()
        self._lock = threading.Lock()
        self._prefect_observe: SuspensionObserverFactory | None = None

    async def __aenter__(self) -> SharedSuspensionObserver:
        self._loop = asyncio.get_running_loop()
        await self._observer.__aenter__()
        self.install()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.uninstall()
        self._loop = None
        await self._observer.__aexit__(*exc_info)

    def install(self) -> None:
        if self._prefect_observe is None:
            self._prefect_observe = prefect.flow_engine.observe_flow_run_suspension
            prefect.flow_engine.observe_flow_run_suspension = self.observe  # type: ignore[assignment]

    def uninstall(self) -> None:
        if self._prefect_observe is not None:
            if prefect.flow_engine.observe_flow_run_suspension == self.observe:
                prefect.flow_engine.observe_flow_run_suspension = self._prefect_observe  # type: ignore[assignment]
            self._prefect_observe = None

    def adopt(self, flow_run_id: UUID) -> None:
        """The engine's next request to watch this run (this process executes it) goes to the shared observer."""
        with self._lock:
            self._adopted.add(flow_run_id)

    def release(self, flow_run_id: UUID) -> None:
        with self._lock:
            self._adopted.discard(flow_run_id)

    @property
    def watched(self) -> set[UUID]:
        """The runs the shared observer is watching now (executing in this process)."""
        with self._lock:
            return set(self._watching)

    def observe(
        self, flow_run_id: UUID, suspension_request: FlowRunSuspensionRequest, polling_interval: float = 10
    ) -> AbstractContextManager[None]:
        """Stands in for `prefect.flow_engine.observe_flow_run_suspension` (same signature)."""
        with self._lock:
            adopted = flow_run_id in self._adopted
        loop = self._loop
        if not adopted or loop is None or loop.is_closed():
            assert self._prefect_observe is not None
            return self._prefect_observe(flow_run_id, suspension_request)
        return self._watch(loop, flow_run_id)

    @contextmanager
    def _watch(self, loop: asyncio.AbstractEventLoop, flow_run_id: UUID) -> Iterator[None]:
        started = asyncio.run_coroutine_threadsafe(self._observer.watch_flow_run_id(flow_run_id), loop)
        try:
            started.result(timeout=self.watch_start_timeout_s)
        except Exception as exc:  # noqa: BLE001 - the run goes on; only an outside suspension goes unnoticed
            started.cancel()
            logger.warning("Flow run %s: suspension observer not ready (%s); the run goes on without it",
                           flow_run_id, type(exc).__name__)
        else:
            with self._lock:
                self._watching.add(flow_run_id)
        try:
            yield
        finally:
            with self._lock:
                self._watching.discard(flow_run_id)
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._observer.remove_in_flight_flow_run_id, flow_run_id)

    @staticmethod
    def _on_suspended(flow_run_id: UUID, state: Any) -> None:
        mark_flow_run_suspension_requested(flow_run_id, state)


class ExecutionSlots:
    """At most `size` flow bodies execute at once in this process; a run beyond that waits, Running, for a slot.

    `wait_for_slot` is a Prefect Running hook (the engine calls it in the run's thread once the run is
    Running); `release` is called when the run's thread ends (final, suspended, crashed or stopped). Waiting
    runs are served in arrival order.
    """

    def __init__(self, size: int, heartbeat_s: float | None = None) -> None:
        if size < 1:
            raise ValueError("execution slots must be at least 1")
        self.size = size
        #: A queued run is Running but its engine sends no heartbeat yet: the queue sends them, so the zombie
        #: automation and the recovery sweep never take a run waiting for a slot for a dead one.
        self.heartbeat_s = heartbeat_s
        self._holders: set[UUID] = set()
        self._queue: list[UUID] = []
        self._changed = threading.Condition()

    @property
    def busy(self) -> int:
        with self._changed:
            return len(self._holders)

    def wait_for_slot(self, flow: Any, flow_run: FlowRun, state: Any) -> None:
        with self._changed:
            if flow_run.id in self._holders:  # the engine entered Running again within one thread
                return
            busy, ahead = len(self._holders), len(self._queue)
            self._queue.append(flow_run.id)
        if busy >= self.size or ahead:
            get_run_logger_for(flow_run).info(
                "Queued: %d flow runs are executing steps in this process (limit %d), %d queued before this one;"
                " it starts when a slot frees (a run ends or waits)",
                busy,
                self.size,
                ahead,
            )
        with self._changed:
            while len(self._holders) >= self.size or self._queue[0] != flow_run.id:
                if not self._changed.wait(timeout=self.heartbeat_s) and self.heartbeat_s:
                    send_heartbeat(flow, flow_run)
            self._queue.pop(0)
            self._holders.add(flow_run.id)
            self._changed.notify_all()

    def release(self, flow_run_id: UUID) -> None:
        with self._changed:
            if flow_run_id in self._queue:  # stopped while queued
                self._queue.remove(flow_run_id)
            self._holders.discard(flow_run_id)
            self._changed.notify_all()


def send_heartbeat(flow: Any, flow_run: FlowRun) -> None:
    """The event Prefect's engine emits while a run executes (`prefect.flow-run.heartbeat`), for a queued run."""
    related = [{"prefect.resource.id": f"prefect.flow.{flow_run.flow_id}", "prefect.resource.role": "flow",
                "prefect.resource.name": getattr(flow, "name", "")}]  # fmt: skip
    if flow_run.deployment_id:
        related.append({"prefect.resource.id": f"prefect.deployment.{flow_run.deployment_id}",
                        "prefect.resource.role": "deployment"})  # fmt: skip
    emit_event(
        event="prefect.flow-run.heartbeat",
        resource={"prefect.resource.id": f"prefect.flow-run.{flow_run.id}", "prefect.resource.name": flow_run.name},
        related=related,
    )


def get_run_logger_for(flow_run: FlowRun) -> Any:
    """The run's logger (its lines reach the run's logs in the UI) from inside a hook."""
    from prefect.logging.loggers import flow_run_logger

    return flow_run_logger(flow_run)


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

    def __init__(
        self,
        flow: Flow[..., Any],
        limiter: anyio.CapacityLimiter,
        suspension: SharedSuspensionObserver | None = None,
        slots: ExecutionSlots | None = None,
        heartbeat_seconds: float | None = None,
    ) -> None:
        self._flow = flow
        self._limiter = limiter
        self._suspension = suspension
        self._slots = slots
        self._heartbeat_seconds = heartbeat_seconds

    async def start(
        self, flow_run: FlowRun, task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        thread = FlowRunThread()
        task_status.started(ProcessHandle(thread, ThreadTerminationScope(thread)))  # type: ignore[arg-type]
        thread.returncode = await anyio.to_thread.run_sync(self._run, flow_run, thread, limiter=self._limiter)

    def _run(self, flow_run: FlowRun, thread: FlowRunThread) -> int:
        """0 when the engine recorded how the run ended (final, suspended, aborted), 1 when it could not."""
        thread.thread_id = threading.get_ident()
        if self._suspension is not None:
            self._suspension.adopt(flow_run.id)
        # the engine emits a heartbeat event every `heartbeat_seconds` while the run executes: a run whose
        # heartbeats stop (this process died) is found by the zombie automation and the recovery sweep
        beats = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: int(self._heartbeat_seconds)} if self._heartbeat_seconds else {}
        try:
            with temporary_settings(updates=beats):
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
            if self._suspension is not None:
                self._suspension.release(flow_run.id)
            if self._slots is not None:
                self._slots.release(flow_run.id)
            thread.done.set()


class InProcessRunner(Runner):
    """Prefect's `Runner`, with the runs of the flows given to `add_served` started by `InProcessStarter`.

    `limit` caps the runs in flight (threads); `executing` caps the flow bodies executing at once among them.
    """

    def __init__(self, *, executing: int | None = None, heartbeat_seconds: float | None = None, **kwargs: Any) -> None:
        super().__init__(heartbeat_seconds=heartbeat_seconds, **kwargs)
        self.heartbeat_seconds = heartbeat_seconds
        self.served_flows: dict[UUID, Flow[..., Any]] = {}
        self.suspension_observer = SharedSuspensionObserver()
        self.slots = ExecutionSlots(executing, heartbeat_s=heartbeat_seconds) if executing else None

    def add_served(self, deployment: RunnerDeployment, flow: Flow[..., Any]) -> UUID:
        """Register `deployment` with the API (as `add_deployment`) and run its flow runs in threads."""
        deployment_id = self.add_deployment(deployment)
        assert isinstance(deployment_id, UUID)  # called from sync code: never a coroutine
        if self.slots is not None:
            flow = flow.with_options(on_running=[self.slots.wait_for_slot, *flow.on_running_hooks])
        self.served_flows[deployment_id] = flow
        return deployment_id

    async def __aenter__(self) -> InProcessRunner:
        share_prefect_ssl_contexts()
        quiet_thread_timeout_notices()
        await super().__aenter__()
        await self._exit_stack.enter_async_context(self.suspension_observer)
        limiter = anyio.CapacityLimiter(self.limit or 1000)
        poller = self._scheduled_run_poller
        prefect_starter = poller._resolve_starter

        def resolve_starter(flow_run: FlowRun) -> Any:
            flow = self.served_flows.get(flow_run.deployment_id) if flow_run.deployment_id else None
            if flow is None:
                return prefect_starter(flow_run)
            return InProcessStarter(flow, limiter, self.suspension_observer, self.slots, self.heartbeat_seconds)

        poller._resolve_starter = resolve_starter
        return self
