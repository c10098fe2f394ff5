"""Serves the upsell deployments from this process (`python -m deployments.serve`, or `upsell serve`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from pathlib import Path
from typing import Any

import yaml
from prefect.client.orchestration import get_client
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import TerminationSignal
from prefect.logging import get_logger
from prefect.runner import Runner
from prefect.settings import PREFECT_API_URL

from blocks.limits import ensure_rate_limits
from deployments.automations import HEARTBEAT_S, ensure_zombie_automation
from deployments.report_job import upsell_report
from deployments.stack import api_is_up
from deployments.sweeps import drop_schedules, start_watching, sweeps
from flows.backfill import upsell_backfill
from flows.playbooks import PlaybookFileError, load_playbooks
from flows.recovery import upsell_recovery
from flows.reply_timeouts import reply_timeouts
from flows.upsell import upsell
from tasks.runtime.settings import UpsellSettings

try:
    from deployments.inprocess import InProcessRunner
except ImportError as exc:  # another Prefect release, or a private name gone: Prefect's own process runner
    InProcessRunner = None  # type: ignore[assignment,misc]
    IN_PROCESS_UNAVAILABLE = f"{type(exc).__name__}: {exc}"
else:
    IN_PROCESS_UNAVAILABLE = ""

SWEEP_INTERVAL_S = 300
#: The sweeps this process runs only when they have work (`deployments.sweeps`), instead of on their schedules.
WATCHED_SWEEPS = ("reply-timeouts", "upsell-recovery")
#: The deployments, described once: `upsell serve` reads the same file `prefect deploy --all` does.
PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"
#: The flows the entrypoints of prefect.yaml name.
FLOWS: dict[str, Any] = {
    "flows/upsell.py:upsell": upsell,
    "flows/reply_timeouts.py:reply_timeouts": reply_timeouts,
    "flows/recovery.py:upsell_recovery": upsell_recovery,
    "flows/backfill.py:upsell_backfill": upsell_backfill,
    "deployments/report_job.py:upsell_report": upsell_report,
}
#: Flow runs in flight at once (threads, or processes with --processes); runs waiting for a reply hold none.
DEFAULT_LIMIT = 400
DEFAULT_PROCESS_LIMIT = 8  # each flow-run process is ~150 MiB and 1.5 s of CPU to start
#: Of the runs in flight (threads), how many execute their steps at once; the others are Running and queued.
DEFAULT_EXECUTING = 8
#: Longest a stop asked by SIGTERM takes: Prefect's graceful stop (in-flight runs stopped and recorded, schedules
#: paused), then an exit. Below `deployments.stack.STOP_TIMEOUT_S`, so `upsell up` never has to SIGKILL it.
STOP_GRACE_S = 15.0

logger = get_logger("upsell.serve")


class BoundedStop(Runner):
    """A runner whose stop on SIGTERM ends within `stop_grace_s`.

    Prefect's runner stops gracefully on SIGTERM: it stops the flow runs in flight and records them, then pauses
    the served deployments' schedules, each through the API with the client's retries. With the API gone (the
    Prefect server stopped first) that is more than a minute of retries, during which the process holds on.
    Here the schedules are left alone when the API does not answer, and whatever is still running at the
    deadline is left as a crash would leave it: the runs stop sending heartbeats, and the zombie automation and
    the upsell-recovery sweep take them over. A second SIGTERM exits at once.
    """

    stop_grace_s: float = STOP_GRACE_S
    _stop_asked: bool = False

    def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
        if self._stop_asked:
            _exit_now("a second stop signal")
        self._stop_asked = True
        api_url = PREFECT_API_URL.value()
        if self.pause_on_shutdown and not (api_url and api_is_up(api_url, timeout_s=1)):
            logger.warning("The Prefect API does not answer: stopping without pausing the schedules")
            self.pause_on_shutdown = False
        logger.info("Stopping: the runs in flight are stopped and recorded (at most %.0f s)", self.stop_grace_s)
        late = f"still stopping after {self.stop_grace_s:.0f} s"
        deadline = threading.Timer(self.stop_grace_s, _exit_now, args=(late,))
        deadline.daemon = True
        deadline.start()
        super().handle_sigterm(*args, **kwargs)


def _exit_now(why: str) -> None:
    """End the process without waiting for the runner (the runs it leaves are found as a crash's would be)."""
    logger.warning("Exiting now (%s); runs still in flight are recovered by the upsell-recovery sweep", why)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


class ProcessRunner(BoundedStop):
    """Prefect's runner (one process per flow run), with the bounded stop."""


if InProcessRunner is not None:

    class ThreadRunner(BoundedStop, InProcessRunner):
        """The in-process runner (flow runs in threads), with the bounded stop."""


def declared_deployments() -> list[dict[str, Any]]:
    """The `deployments:` entries of prefect.yaml."""
    return list(yaml.safe_load(PREFECT_YAML.read_text())["deployments"])


def _schedule(declared: dict[str, Any], sweep_interval_s: int | None) -> dict[str, Any]:
    """`interval=` / `cron=` of `to_deployment` from the entry's first schedule; none when schedules are off, and
    none for the sweeps this process runs when they have work (`WATCHED_SWEEPS`)."""
    schedules = declared.get("schedules") or []
    if not sweep_interval_s or not schedules or declared["name"] in WATCHED_SWEEPS:
        return {}
    first = schedules[0]
    if "interval" in first:
        return {"interval": first["interval"]}
    return {"cron": first["cron"]}


def build_deployments(sweep_interval_s: int | None = SWEEP_INTERVAL_S, name_suffix: str = "") -> list[RunnerDeployment]:
    """The deployments of prefect.yaml (`upsell`, the `reply-timeouts` sweep, the `upsell-recovery` sweep, the
    daily `upsell-backfill`, the weekly `upsell-report`), served by this process instead of a work pool.

    `sweep_interval_s=0` serves them without schedules (tests and the demo trigger them explicitly).
    `name_suffix` names each deployment `<name>-<suffix>`: a second set beside the main one, which a runner
    serving the main set never picks runs of (nor pauses when it stops).
    """
    suffix = f"-{name_suffix}" if name_suffix else ""
    deployments = [
        FLOWS[declared["entrypoint"]].to_deployment(
            name=f"{declared['name']}{suffix}",
            description=declared.get("description"),
            tags=declared.get("tags"),
            parameters=declared.get("parameters"),
            enforce_parameter_schema=declared.get("enforce_parameter_schema", True),
            **_schedule(declared, sweep_interval_s),
        )
        for declared in declared_deployments()
    ]
    return [d for d in deployments if isinstance(d, RunnerDeployment)]  # sync context: never a coroutine


def main(argv: list[str] | None = None) -> None:
    """Serve the deployments until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m deployments.serve", description=main.__doc__)
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help=f"Max flow runs in flight (default {DEFAULT_LIMIT} threads, {DEFAULT_PROCESS_LIMIT} processes with"
        " --processes); runs waiting for a reply hold none.",
    )
    parser.add_argument(
        "--executing",
        type=int,
        default=DEFAULT_EXECUTING,
        help=f"Of the runs in flight, how many execute steps at once (default {DEFAULT_EXECUTING}); the others are"
        " Running and queued in arrival order. Threads only.",
    )
    parser.add_argument(
        "--processes",
        action="store_true",
        help="Start each flow run (and each resume) as its own Python process, Prefect's default, instead of a"
        " thread of this process: isolation and signal-based cancellation for ~1.5 s of CPU per start.",
    )
    parser.add_argument(
        "--sweep-interval",
        type=int,
        default=SWEEP_INTERVAL_S,
        help="Seconds between looks for expired waits (a reply-timeouts run is created only when there are some;"
        " dead runs are looked for every minute); 0 disables the sweeps and the schedules.",
    )
    parser.add_argument(
        "--name-suffix",
        default="",
        help="Serve each deployment as <name>-<suffix> (e.g. upsell/upsell-canary), beside the main set; point the"
        " receiver at it with UPSELL_DEPLOYMENT_NAME.",
    )
    parser.add_argument(
        "--no-rate-limits",
        action="store_true",
        help="Do not create the vendors' global concurrency limits (upsell-slack, upsell-anthropic, ...).",
    )
    args = parser.parse_args(argv)
    if args.executing < 1:
        parser.error("--executing must be at least 1")
    try:  # the flows read it at every start: an invalid file would fail every run, so serving refuses it now
        load_playbooks(UpsellSettings().playbooks_file)
    except PlaybookFileError as exc:
        parser.exit(2, f"Invalid playbooks: {exc}\n")
    if not args.no_rate_limits:
        with get_client(sync_client=True) as client:
            for name, rate in ensure_rate_limits(client).items():
                print(f"Rate limit {name}: {rate.per_second:g}/s (burst {rate.burst})")  # noqa: T201
    if not args.processes and InProcessRunner is None:
        logger.warning(
            "The in-process runner is unavailable (%s); serving with Prefect's process runner", IN_PROCESS_UNAVAILABLE
        )
        args.processes = True
    limit = args.limit or (DEFAULT_PROCESS_LIMIT if args.processes else DEFAULT_LIMIT)
    runner = (
        ProcessRunner(pause_on_shutdown=True, limit=limit, heartbeat_seconds=HEARTBEAT_S)
        if args.processes
        else ThreadRunner(
            pause_on_shutdown=True, limit=limit, executing=args.executing, heartbeat_seconds=HEARTBEAT_S
        )
    )
    deployments = build_deployments(args.sweep_interval, args.name_suffix)
    if args.sweep_interval:  # the automation runs the recovery deployment: it must exist first
        recovery = next(d for d in deployments if d.flow_name == "upsell-recovery")
        recovery.apply()
        if asyncio.run(ensure_zombie_automation(f"upsell-recovery/{recovery.name}")):
            print("Created the upsell-crash-zombie-runs automation (silent runs go to the recovery sweep)")  # noqa: T201
        timeouts = next(d for d in deployments if d.flow_name == "reply-timeouts")
        timeouts.apply()  # created before the first look for work (the runner applies it again, unchanged)
        for sweep in (recovery, timeouts):
            drop_schedules(f"{sweep.flow_name}/{sweep.name}")
        start_watching(sweeps(f"upsell-recovery/{recovery.name}", f"reply-timeouts/{timeouts.name}",
                              args.sweep_interval))
    flows: dict[str, Any] = {f.name: f for f in FLOWS.values()}
    for deployment in deployments:
        if InProcessRunner is not None and isinstance(runner, InProcessRunner):
            runner.add_served(deployment, flows[str(deployment.flow_name)])
        else:
            runner.add_deployment(deployment)
    mode = (
        f"one process per flow run, at most {limit} at once"
        if args.processes
        else f"flow runs in threads of this process: at most {limit} in flight, {args.executing} executing steps"
    )
    print(f"Serving {', '.join(d.name for d in deployments)} ({mode})")  # noqa: T201
    try:
        asyncio.run(runner.start())
    except (KeyboardInterrupt, TerminationSignal) as exc:
        logger.info("Received %s, shutting down...", type(exc).__name__)


if __name__ == "__main__":
    main()
