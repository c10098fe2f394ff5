"""Detection with `upsell-pool` workers: a worker (and every flow-run process it started) is SIGKILLed while
upsells execute, as a lost machine would be; how long until each dead run is noticed, and does each finish?

    python bench/workers.py [--runs 8] [--kill-after-s 6] [--kill-when-running N]

Starts its own Prefect server, creates the `upsell-pool` process work pool, runs `prefect deploy --all` with
the project's `prefect.yaml` (heartbeats every 30 s through the pool's job variables), creates the
zombie-detection automation (as `upsell serve` does), and starts `prefect worker start --pool upsell-pool`.
Then `--runs` upsells at FULL_AUTOMATION ("yes" answered to every reply); `--kill-after-s` later (or, with
`--kill-when-running N`, as soon as N runs are Running, their steps executing in the worker's flow-run processes)
the worker's whole process group is SIGKILLed and a new worker started. For every run that was Running or Pending at the
kill it prints when it was noticed (marked Crashed by the automation, or rescheduled by the `upsell-recovery`
sweep, which the new worker runs on its schedule), and how the runs ended. Not part of the test suite;
everything it starts is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

from bench.upsells import answer_yes_until, create_upsells, own_prefect_server, state_label, upsell_runs_among  # noqa: E402
from bench.waiting import descendants  # noqa: E402
from deployments.stack import Stack  # noqa: E402


def start_worker(stack: Stack, env: dict[str, str], n: int) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "prefect", "worker", "start", "--pool", "upsell-pool", "--name", f"worker-{n}"]
    return stack.start(f"worker-{n}", args, env)


def states_at_kill_moment(run_ids: list[str], latest: float, running: int) -> dict[str, str]:
    """The runs' state names at the moment to kill: once `running` runs are Running (0: at `latest`), or `latest`."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while True:
            states = {str(r.id): state_label(r.state) for r in upsell_runs_among(client, run_ids) if r.state}
            if running and Counter(states.values())["Running"] >= running or time.monotonic() >= latest:
                return states
            time.sleep(0.3 if running else max(0.0, min(1.0, latest - time.monotonic())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--kill-after-s", type=float, default=6.0, help="Seconds after the runs are created.")
    parser.add_argument(
        "--kill-when-running", type=int, default=0,
        help="Kill as soon as this many runs are Running (at the latest --kill-after-s after creation).",
    )  # fmt: skip
    parser.add_argument("--settle-s", type=float, default=900, help="Give up after this long.")
    args = parser.parse_args()
    with own_prefect_server("workers") as (work, stack, api_url):
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import WorkPoolCreate

        from deployments.automations import ensure_zombie_automation

        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name="upsell-pool", type="process"))
        env = {**os.environ, "PWD": str(REPO), "UPSELL_DATA_DIR": str(work / "data"),
               "UPSELL_RETRY_BASE_DELAY_S": "1", "PREFECT_WORKER_QUERY_SECONDS": "2"}  # fmt: skip
        deploy = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        if deploy.returncode != 0:
            raise SystemExit(deploy.stdout[-2000:] + deploy.stderr[-2000:])
        asyncio.run(ensure_zombie_automation())
        worker = start_worker(stack, env, 1)
        time.sleep(5)
        _alerts, run_ids = create_upsells("workers", args.runs)
        created = time.monotonic()
        stop = threading.Event()
        answer_yes_until(stop, run_ids)
        at_kill = states_at_kill_moment(run_ids, created + args.kill_after_s, args.kill_when_running)
        flow_processes, _ = descendants(worker.pid)  # Prefect may start them in sessions of their own
        os.killpg(worker.pid, signal.SIGKILL)  # the worker's group, then every flow-run process it started
        for pid in flow_processes:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        worker.wait()
        killed = time.monotonic()
        print(f"worker killed {killed - created:.1f}s after the runs were created; states then: "
              f"{dict(Counter(at_kill.values()))}")  # fmt: skip
        start_worker(stack, env, 2)
        executing = {run_id for run_id, name in at_kill.items() if name in ("Running", "Pending", "Submitting")}
        noticed: dict[str, tuple[float, str]] = {}
        final = {"Completed", "Failed", "Cancelled"}
        while time.monotonic() - killed < args.settle_s:
            with get_client(sync_client=True) as client:
                runs = upsell_runs_among(client, run_ids)
            for run in runs:
                run_id, state = str(run.id), run.state
                if run_id in executing and run_id not in noticed and state and state.name not in (
                        "Running", "Pending", "Submitting"):  # fmt: skip
                    noticed[run_id] = (time.monotonic() - killed, f"{state.name}: {(state.message or '')[:70]}")
            names = Counter(state_label(r.state) for r in runs)
            if set(names) <= final:
                break
            print(f"  {time.monotonic() - killed:5.0f}s after the kill: {dict(names)}")
            time.sleep(5)
        stop.set()
        print(f"\n{args.runs} upsells on upsell-pool; {len(executing)} executing when the worker died")
        for run_id in sorted(executing, key=lambda r: noticed.get(r, (1e9, ""))[0]):
            seconds, how = noticed.get(run_id, (float("nan"), "never noticed"))
            print(f"  {run_id[:8]} ({at_kill[run_id]} at the kill): noticed after {seconds:.0f}s as {how}")
        print(f"outcomes: {dict(names)} ({time.monotonic() - killed:.0f}s after the kill)")


if __name__ == "__main__":
    main()
