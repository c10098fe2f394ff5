"""Crash injection: upsells at FULL_AUTOMATION while the serving process is SIGKILLed at random moments.

    python bench/crash.py [--runs 30] [--kills 10] [--processes] [--seed 1]

Starts its own Prefect server (SQLite, with its services: the zombie automation needs the triggers service)
and `python -m deployments.serve` (thread mode, or `--processes`), creates `--runs` upsell runs, answers every
reply wait with "yes" (so each upsell sends an email, posts to Slack and books a meeting), SIGKILLs the serving
process `--kills` times at random moments over about `--kill-window-s` seconds (default 45: 1-8 s apart) and
restarts it each time. Then it waits until every run
is final (or 10 minutes after the last kill) and prints:

- duplicates of every kind: runs per event, Slack posts per event, meetings per event (the local stand-ins
  append one record per call, so a second call would show), and emails (the outbox writes one file per
  idempotency key: a second send would overwrite it, so the email figure is read from the store's send records);
- how the runs ended, how many recoveries the upsell-recovery sweep made, and the time from the last kill to
  the last run final.

Not part of the test suite (it runs for minutes). Everything it starts is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
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

from bench.upsells import answer_yes_until, create_upsells, own_prefect_server, state_label  # noqa: E402
from deployments.stack import Stack, wait_for_deployments  # noqa: E402


def start_serving(stack: Stack, api_url: str, data_dir: Path, processes: bool, n: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_RUNNER_POLL_FREQUENCY": "2",
           "UPSELL_DATA_DIR": str(data_dir), "UPSELL_RETRY_BASE_DELAY_S": "1"}  # fmt: skip
    args = [sys.executable, "-m", "deployments.serve", "--sweep-interval", "300", "--no-rate-limits"]
    return stack.start(f"runner-{n}", args + (["--processes"] if processes else []), env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--processes", action="store_true", help="Serve with a process per flow run.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--kill-window-s", type=float, default=45, help="The kills fall at random moments over about this long."
    )
    parser.add_argument("--settle-s", type=float, default=600, help="How long to wait after the last kill.")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with own_prefect_server("crash") as (work, stack, api_url):
        data_dir = work / "data"
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName

        from tasks.recover_runs import recovery_attempts

        serving = start_serving(stack, api_url, data_dir, args.processes, 0)
        wait_for_deployments(api_url, ["upsell/upsell", "upsell-recovery/upsell-recovery"], stack)
        alerts, run_ids = create_upsells("crash", args.runs)
        started = time.monotonic()
        stop = threading.Event()
        answer_yes_until(stop, run_ids)
        for kill in range(1, args.kills + 1):
            time.sleep(rng.uniform(1, max(2.0, 2 * args.kill_window_s / args.kills - 1)))
            serving.send_signal(signal.SIGKILL)
            serving.wait()
            print(f"kill {kill}/{args.kills} at {time.monotonic() - started:.1f}s")
            serving = start_serving(stack, api_url, data_dir, args.processes, kill)
        last_kill = time.monotonic()

        def states() -> Counter[str]:
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["upsell"])), limit=200)
            return Counter(state_label(r.state) for r in runs if str(r.id) in run_ids)

        final = {"Completed", "Failed", "Cancelled"}
        while time.monotonic() - last_kill < args.settle_s:
            now = states()
            if set(now) <= final:
                break
            print(f"  {time.monotonic() - last_kill:5.0f}s after the last kill: {dict(now)}")
            time.sleep(10)
        settled = time.monotonic() - last_kill
        stop.set()

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["upsell"])), limit=200)
            mine = [r for r in runs if str(r.id) in run_ids]
            keys = {f"upsell:{a.event_id}" for a in alerts}
            per_key = Counter(r.idempotency_key for r in runs if r.idempotency_key in keys)
            recoveries = sum(len(recovery_attempts(client, r.id)) for r in mine)  # type: ignore[arg-type]
            outcomes: Counter[str] = Counter()
            for r in mine:
                status = state_label(r.state)
                if r.state and r.state.is_completed():
                    try:  # the UpsellOutcome the run returned (persisted by the runner under PREFECT_HOME)
                        status = str(r.state.result(raise_on_failure=False).status)  # type: ignore[union-attr]
                    except Exception:  # noqa: BLE001 - the state name is the figure then
                        pass
                outcomes[status] += 1
        slack = [json.loads(line) for line in (data_dir / "slack.jsonl").read_text().splitlines()] if (
            data_dir / "slack.jsonl").exists() else []  # fmt: skip
        meetings = [json.loads(line) for line in (data_dir / "meetings.jsonl").read_text().splitlines()] if (
            data_dir / "meetings.jsonl").exists() else []  # fmt: skip
        slack_per = Counter(next((a.event_id for a in alerts if a.account_id in s.get("text", "")), "?") for s in slack)
        meeting_per = Counter(next((a.event_id for a in alerts if a.account_id in m.get("topic", "")), "?")
                              for m in meetings)  # fmt: skip
        with sqlite3.connect(data_dir / "upsell.db") as db:
            sends = db.execute("SELECT step, status, attempts FROM idempotency").fetchall()
        mode = "processes" if args.processes else "threads"
        print(f"\nmode {mode}: {args.runs} upsells, {args.kills} SIGKILLs of the serving process")
        print(f"runs per event: max {max(per_key.values())} (events {len(per_key)}/{args.runs})")
        print(f"Slack posts per event: max {max(slack_per.values(), default=0)}; meetings per event: max "
              f"{max(meeting_per.values(), default=0)}")  # fmt: skip
        print(f"send records: {Counter((s, st) for s, st, _ in sends)}; claims taken more than once: "
              f"{sum(1 for *_, n in sends if n > 1)}")  # fmt: skip
        print(f"outcomes: {dict(outcomes)}; recoveries made by the sweep: {recoveries}")
        print(f"all final {settled:.0f}s after the last kill" if settled < args.settle_s else
              f"NOT all final {args.settle_s:.0f}s after the last kill: {dict(states())}")  # fmt: skip


if __name__ == "__main__":
    main()
