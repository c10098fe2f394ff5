"""Waiting benchmark (issue 5, point 4; not part of the test suite): what N upsells waiting for a reply cost.

It starts its own Prefect server (SQLite in a temporary PREFECT_HOME) on a free port, the deployments served by
`python -m deployments.serve` (the runner), and the receiver in a thread; then:

1. baseline: one signed critical alert alone (FULL_AUTOMATION, so the only wait is the customer's reply),
   alert accepted (202) -> flow Running, then reply "no" -> Completed;
2. burst: N signed alerts (unique event and account ids) -> alert-accepted to flow-running latency p50/p95;
3. once all N are Suspended on "reply": processes still held (children of the runner), RSS of the runner
   before/after, growth of prefect.db (+ -wal) per waiting run;
4. a burst of N "no" replies -> resume to Completed latency p50/p95, and how many ended `completed`;
5. the floor (skip with --no-floor): steps 2 and 4 again with `bench/floor.py`'s flow, which takes the same
   parameters and only suspends for the reply, through the same receiver settings and runner limits. It is
   what Prefect's machinery alone costs on this machine; the upsell's latencies are also given as ratios to it.

Every process it starts is stopped by PID at the end (also on Ctrl-C). Example:
`.venv/bin/python bench/waiting.py --n 200 --poll 2`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `python bench/waiting.py` from anywhere finds the project packages

from bench.upsells import state_label  # noqa: E402
from deployments.stack import (  # noqa: E402 - stack.py does not import prefect, so PREFECT_HOME can still be set
    Stack,
    base_env,
    ensure_prefect_server,
    start_runner,
    wait_for_deployments,
)
from webhook.ports import free_port  # noqa: E402

SECRET = "bench-waiting-secret-0123456789"
DEPLOYMENTS = ["upsell/upsell", "reply-timeouts/reply-timeouts", "upsell-backfill/upsell-backfill"]
TRIGGER_TARGET_P95_S = 3.0
RESUME_TARGET_P95_S = 10.0
#: How often the benchmark reads its runs' states. Latencies come from the server's own timestamps (start and
#: end times), so this only costs the server reads, not precision: 200 runs read twice a second was a few
#: percent of the server's CPU.
STATE_POLL_S = 2.0
MIN_AVAILABLE_MB = 2048  # abort rather than let the OOM killer pick processes on a shared machine


# ---------------------------------------------------------------- processes and files (/proc, no psutil)


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces and parentheses
    return int(fields[1]), fields[0]


def descendants(root: int) -> tuple[list[int], int]:
    """Live descendant pids of `root` and the number of zombies among them (exited, not reaped yet)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    alive, zombies, todo = [], 0, [root]
    while todo:
        for pid, state in children.get(todo.pop(), []):
            if state == "Z":
                zombies += 1
            else:
                alive.append(pid)
                todo.append(pid)
    return alive, zombies


def cpu_seconds(root: int) -> float:
    """User + system CPU of a process, its live descendants and the children it has reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in [root, *descendants(root)[0]]:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
    return total


def rss_mb(pid: int) -> float:
    """Resident set size of one process in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return math.inf


def db_bytes(home: Path) -> int:
    """Size of the Prefect SQLite database with its write-ahead log."""
    return sum(p.stat().st_size for p in (home / "prefect.db", home / "prefect.db-wal") if p.exists())


def db_contents(home: Path) -> tuple[int, dict[str, int]]:
    """Bytes in use (pages minus free pages, WAL included, so checkpoints do not move it) and rows per table."""
    conn = sqlite3.connect(f"file:{home / 'prefect.db'}?mode=ro", uri=True, timeout=30)
    try:
        pages, free, size = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count",
                                                                                  "page_size"))
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        conn.close()
    return (pages - free) * size, rows


class Sampler(threading.Thread):
    """Samples the runner's flow-run subprocesses every 0.5 s: peaks per phase, and a memory guard."""

    def __init__(self, runner_pid: int) -> None:
        super().__init__(name="sampler", daemon=True)
        self.runner_pid = runner_pid
        self.peak_children = 0
        self.peak_children_rss_mb = 0.0
        self.peak_runner_rss_mb = 0.0
        self.low_memory: str | None = None
        self._stop = threading.Event()

    def reset(self) -> None:
        self.peak_children, self.peak_children_rss_mb, self.peak_runner_rss_mb = 0, 0.0, 0.0

    def run(self) -> None:
        while not self._stop.wait(0.5):
            alive, _ = descendants(self.runner_pid)
            self.peak_children = max(self.peak_children, len(alive))
            self.peak_children_rss_mb = max(self.peak_children_rss_mb, sum(rss_mb(p) for p in alive))
            self.peak_runner_rss_mb = max(self.peak_runner_rss_mb, rss_mb(self.runner_pid))
            if available_mb() < MIN_AVAILABLE_MB:
                self.low_memory = f"MemAvailable fell below {MIN_AVAILABLE_MB} MiB with {len(alive)} flow processes"
                os.kill(os.getpid(), signal.SIGINT)  # stop the benchmark (and every process) before the OOM killer
                return

    def stop(self) -> None:
        self._stop.set()


# ---------------------------------------------------------------- one upsell, followed through


@dataclass
class Tracked:
    event_id: str
    account_id: str
    accepted_at: float = 0.0  # wall clock when the receiver answered 202
    flow_run_id: str = ""
    queued: bool = False  # the receiver spooled it (its Prefect call timed out); the run is created on replay
    start_time: float | None = None  # first Running (server's flow_run.start_time)
    waiting: bool = False
    resumed_at: float | None = None  # wall clock when the resume was accepted
    end_time: float | None = None
    final_state: str | None = None
    outcome_status: str | None = None
    #: server timestamps of the first segment's states, by state name (first of each): where the start went
    first_states: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def trigger_latency(self) -> float | None:
        return None if self.start_time is None else self.start_time - self.accepted_at

    @property
    def resume_latency(self) -> float | None:
        if self.end_time is None or self.resumed_at is None or self.final_state != "Completed":
            return None
        return self.end_time - self.resumed_at


def alert_body(item: Tracked) -> bytes:
    return json.dumps({
        "event_id": item.event_id, "account_id": item.account_id, "metric_type": "trade_volume",
        "current_value": 150.0, "threshold": 100.0, "severity": "critical",
    }).encode()


def new_items(n: int, tag: str) -> list[Tracked]:
    run = uuid.uuid4().hex[:8]
    return [Tracked(event_id=f"wait-{tag}-{run}-{i:04d}", account_id=f"wait-{tag}-{run}-{i:04d}") for i in range(n)]


async def post_alerts(url: str, items: list[Tracked], concurrency: int) -> float:
    """POST every alert (signed just before sending), `concurrency` at a time; returns the burst's seconds."""
    from tasks.runtime.signing import SIGNATURE_HEADER, sign

    queue: asyncio.Queue[Tracked] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            item = queue.get_nowait()
            body = alert_body(item)
            headers = {"content-type": "application/json", SIGNATURE_HEADER: sign(body, SECRET)}
            response = await client.post("/alerts", content=body, headers=headers)
            item.accepted_at = time.time()
            answer = response.json()
            if response.status_code == 202 and answer.get("queued"):
                item.queued = True
            elif response.status_code != 202 or not answer.get("triggered"):
                item.problems.append(f"receiver answered {response.status_code}: {answer}")
            else:
                item.flow_run_id = answer["flow_run_id"]

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return time.perf_counter() - started


async def resolve_queued(url: str, items: list[Tracked]) -> None:
    """Spooled alerts (202 queued) get their flow run when the receiver replays them: ask the receiver."""
    from tasks.runtime.signing import SIGNATURE_HEADER, sign

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for item in items:
            if item.flow_run_id or not item.queued:
                continue
            path = f"/alerts/{item.event_id}"
            response = await client.get(path, headers={SIGNATURE_HEADER: sign(path.encode(), SECRET)})
            if response.status_code == 200 and response.json().get("flow_run_id"):
                item.flow_run_id = response.json()["flow_run_id"]


async def read_runs(client: Any, ids: list[str]) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs: list[Any] = []
    for i in range(0, len(ids), 200):  # the API's page size
        chunk = [uuid.UUID(x) for x in ids[i : i + 200]]
        runs += await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)),
                                            limit=len(chunk))
    return runs


async def wait_all_waiting(client: Any, url: str, items: list[Tracked], timeout_s: float, log: Any) -> float:
    """Poll until every run is Suspended on "reply" (recording first Running); returns when the last got there."""
    deadline, last_report = time.monotonic() + timeout_s, 0.0
    while True:
        unresolved = [i for i in items if i.queued and not i.flow_run_id]
        if unresolved:
            await resolve_queued(url, unresolved)
        by_id = {item.flow_run_id: item for item in items if item.flow_run_id}
        pending = [i for i in by_id.values() if not i.waiting and not i.final_state]
        if not pending and not unresolved:
            return time.time()
        if time.monotonic() > deadline:
            for item in pending:
                item.problems.append(f"not waiting for 'reply' after {timeout_s:.0f}s")
            for item in unresolved:
                item.problems.append(f"still spooled in the receiver after {timeout_s:.0f}s")
            return time.time()
        for run in await read_runs(client, [i.flow_run_id for i in pending]):
            item = by_id[str(run.id)]
            if run.start_time is not None and item.start_time is None:
                item.start_time = run.start_time.timestamp()
            state = run.state
            if state is not None and state.is_paused():
                if state.state_details.pause_key == "reply":
                    item.waiting = True
                else:
                    item.problems.append(f"waits for {state.state_details.pause_key!r}, not 'reply'")
                    item.final_state = state_label(state)
            elif state is not None and state.is_final():
                item.final_state = state_label(state)
                item.problems.append(f"ended {state.name} before waiting: {state.message}")
        if time.monotonic() - last_report > 15:
            last_report = time.monotonic()
            running = sum(1 for i in by_id.values() if i.start_time is not None)
            waiting = sum(1 for i in by_id.values() if i.waiting)
            log(f"    {running}/{len(items)} started, {waiting}/{len(items)} waiting for the reply"
                + (f", {len(unresolved)} still spooled in the receiver" if unresolved else ""))
        await asyncio.sleep(STATE_POLL_S)


async def read_start_timelines(client: Any, items: list[Tracked]) -> None:
    """Record, per run, when each state of its first segment was entered (server timestamps)."""
    semaphore = asyncio.Semaphore(8)

    async def one(item: Tracked) -> None:
        async with semaphore:
            states = await client.read_flow_run_states(uuid.UUID(item.flow_run_id))
        for state in sorted(states, key=lambda s: s.timestamp):
            item.first_states.setdefault(state.name, state.timestamp.timestamp())
            if state.is_paused():
                break

    await asyncio.gather(*(one(i) for i in items if i.flow_run_id))


def start_breakdown(items: list[Tracked]) -> list[tuple[str, list[float]]]:
    """accepted -> Pending (created, then picked up by the runner) and Pending -> Running (the engine's start)."""
    picked, started = [], []
    for item in items:
        pending, running = item.first_states.get("Pending"), item.first_states.get("Running")
        if pending is not None and item.accepted_at:
            picked.append(pending - item.accepted_at)
        if pending is not None and running is not None:
            started.append(running - pending)
    return [("alert accepted -> Pending (runner picked it up)", picked), ("Pending -> Running", started)]


async def resume_all(client: Any, items: list[Tracked], chunk: int) -> float:
    """Answer every waiting run with "no", `chunk` replies at a time; returns the burst's seconds."""
    from flows.api import send_customer_reply

    async def reply(item: Tracked) -> None:
        try:
            await send_customer_reply(client, item.flow_run_id, "no")
        except Exception as exc:  # recorded on the run: one refused reply must not stop the measurement
            item.problems.append(f"reply refused: {type(exc).__name__}: {exc}")
            return
        item.resumed_at = time.time()

    waiting = [i for i in items if i.waiting]
    started = time.perf_counter()
    for i in range(0, len(waiting), chunk):
        await asyncio.gather(*(reply(item) for item in waiting[i : i + chunk]))
    return time.perf_counter() - started


async def wait_all_final(client: Any, items: list[Tracked], timeout_s: float, log: Any) -> None:
    """Poll until every resumed run is final; record end_time and the outcome's status."""
    from flows.models import UpsellOutcome

    by_id = {i.flow_run_id: i for i in items if i.resumed_at is not None}
    deadline, last_report = time.monotonic() + timeout_s, 0.0
    while True:
        pending = [i for i in by_id.values() if i.final_state is None]
        if not pending:
            return
        if time.monotonic() > deadline:
            for item in pending:
                item.problems.append(f"not final {timeout_s:.0f}s after the reply")
            return
        for run in await read_runs(client, [i.flow_run_id for i in pending]):
            item, state = by_id[str(run.id)], run.state
            if state is None or not state.is_final():
                continue
            item.final_state = state_label(state)
            end = run.end_time or state.timestamp
            item.end_time = end.timestamp() if end else time.time()
            if state.is_completed():
                try:
                    item.outcome_status = UpsellOutcome.model_validate(await state.aresult()).status.value
                except Exception as exc:  # recorded: an unreadable result is a finding, not a crash of the bench
                    item.problems.append(f"result unreadable: {type(exc).__name__}: {exc}")
            else:
                item.problems.append(f"ended {state.name}: {state.message}")
        if time.monotonic() - last_report > 15:
            last_report = time.monotonic()
            done = sum(1 for i in by_id.values() if i.final_state)
            log(f"    {done}/{len(by_id)} final")
        await asyncio.sleep(STATE_POLL_S)


# ---------------------------------------------------------------- figures


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def fmt(value: float | None, unit: str = "s", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f} {unit}".strip()


@dataclass
class Phase:
    """Latencies of one batch (baseline or burst)."""

    trigger: list[float]
    resume: list[float]

    @classmethod
    def of(cls, items: list[Tracked]) -> Phase:
        return cls(
            [x for x in (i.trigger_latency for i in items) if x is not None],
            [x for x in (i.resume_latency for i in items) if x is not None],
        )


def ratio(burst: float | None, base: float | None) -> str:
    return "-" if burst is None or not base else f"x{burst / base:.1f}"


def verdict(value: float | None, target: float) -> str:
    return "-" if value is None else ("met" if value <= target else "MISSED")


# ---------------------------------------------------------------- the benchmark


def serve_deployments(stack: Stack, api_url: str, poll_s: int, limit: int, executing: int = 0) -> Any:
    """The runner as `upsell up` starts it; `limit` > 0 adds `--limit`, `executing` > 0 `--executing`."""
    args = (["--limit", str(limit)] if limit else []) + (["--executing", str(executing)] if executing else [])
    return start_runner(stack, api_url, sweep_interval_s=0, poll_s=poll_s, extra_args=args)


def isolate_environment(work: Path) -> Path:
    """This process and its children: a private PREFECT_HOME and data dir, no inherited Prefect/Upsell settings."""
    for key in [k for k in os.environ if k.startswith(("PREFECT_", "UPSELL_"))]:
        del os.environ[key]
    home = work / "prefect-home"
    home.mkdir(parents=True)
    os.environ.update({
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "UPSELL_DATA_DIR": str(work / "upsell-data"),
        "PYTHONUNBUFFERED": "1",
    })
    return home


async def run_batch(
    url: str, api_url: str, items: list[Tracked], args: argparse.Namespace, log: Any, between: Any = None
) -> dict[str, float]:
    """Trigger `items` through the receiver, wait for all to wait, call `between`, reply to all, wait for the end."""
    from prefect.client.orchestration import PrefectClient

    timings: dict[str, float] = {}
    timings["post_s"] = await post_alerts(url, items, args.concurrency)
    queued = sum(1 for i in items if i.queued)
    log(f"    {len(items) - queued - sum(1 for i in items if i.problems)}/{len(items)} alerts answered 202 triggered, "
        f"{queued} 202 queued (spooled), in {timings['post_s']:.1f}s")
    async with PrefectClient(api=api_url) as client:
        first_202 = min(i.accepted_at for i in items)
        timings["all_waiting_after_s"] = await wait_all_waiting(client, url, items, args.timeout, log) - first_202
        triggered = [i for i in items if i.flow_run_id]
        await read_start_timelines(client, triggered)
        if between is not None:
            between()
        timings["reply_s"] = await resume_all(client, triggered, args.reply_chunk)
        resumed = [i for i in triggered if i.resumed_at is not None]
        log(f"    {len(resumed)} replies accepted in {timings['reply_s']:.1f}s")
        if resumed:
            first_reply = min(i.resumed_at for i in resumed if i.resumed_at is not None)
            await wait_all_final(client, triggered, args.timeout, log)
            ends = [i.end_time for i in resumed if i.end_time is not None]
            timings["all_final_after_s"] = (max(ends) - first_reply) if ends else math.nan
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/waiting.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200, help="Upsells put into the reply wait (default 200).")
    parser.add_argument("--poll", type=int, default=2,
                        help="PREFECT_RUNNER_POLL_FREQUENCY of the runner, seconds (default 2, as `upsell up`).")
    parser.add_argument("--runner-limit", type=int, default=0,
                        help="Max concurrent flow processes of the runner (deployments.serve --limit); 0 (default) "
                        "serves as the project does, without a limit.")
    parser.add_argument("--concurrency", type=int, default=16, help="Concurrent alert POSTs (default 16).")
    parser.add_argument("--reply-chunk", type=int, default=20, help="Replies sent concurrently (default 20).")
    parser.add_argument("--timeout", type=float, default=1800, help="Max seconds per phase (default 1800).")
    parser.add_argument("--settle", type=float, default=120,
                        help="Max seconds to let flow processes exit after the last run suspended (default 120).")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite",
                        help="The Prefect server's database: sqlite (default, as `upsell up`) or a throwaway "
                        "PostgreSQL cluster (Prefect's recommendation beyond light use; needs initdb).")
    parser.add_argument("--redis", action="store_true",
                        help="Give the Prefect server Redis messaging (a throwaway redis-server; needs redis-server "
                        "and prefect-redis), as deployments/scale.sh runs it. Needed for --server-workers > 1.")
    parser.add_argument("--server-workers", type=int, default=1,
                        help="API worker processes of the Prefect server (prefect server start --workers; default 1; "
                        "more needs --database postgres and --redis, and implies --services-process).")
    parser.add_argument("--services-process", action="store_true",
                        help="Run the server's background services (event persister, task-run recorder, triggers, "
                        "scheduler, ...) as their own process, `prefect server services start`, and the API with "
                        "--no-services, as Prefect's scaling guide lays it out. Needs --redis. Prefect starts no "
                        "services at all with --workers > 1, so --server-workers > 1 always does this.")
    parser.add_argument("--executing", type=int, default=0,
                        help="deployments.serve --executing: flow bodies executing at once (0: its default).")
    parser.add_argument("--no-floor", action="store_true",
                        help="Skip the floor: the same burst of bench/floor.py's flow, which only suspends for the "
                        "reply (Prefect's own cost of an upsell-shaped run, the ratios' second baseline).")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary folder (database, logs).")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    if args.server_workers > 1 and (args.database != "postgres" or not args.redis):
        parser.error("--server-workers > 1 needs --database postgres and --redis (Prefect's requirement)")
    args.services_process = args.services_process or args.server_workers > 1
    if args.services_process and not args.redis:
        parser.error("--services-process needs --redis (the API and the services exchange events through it)")

    work = Path(tempfile.mkdtemp(prefix="upsell-bench-waiting-"))
    home = isolate_environment(work)
    stack = Stack(log_dir=work / "logs")
    receiver = sampler = None
    failed = True

    def log(message: str) -> None:
        print(message, flush=True)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        pg_url = None
        if args.database == "postgres":
            from bench.postgres import start_postgres

            pg_url = os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = start_postgres(stack, work)
        if args.redis:
            from bench.redis_server import start_redis

            os.environ.update(start_redis(stack, work))
        if args.server_workers > 1:
            # API workers starting together on a fresh database race to migrate it and to register block types:
            # one single-worker start does both first, then the server starts with its workers.
            first = Stack(log_dir=work / "logs" / "first-start")
            try:
                ensure_prefect_server(first, free_port())
            finally:
                first.stop()
        port = free_port()
        setup = (f"{args.database}{' + Redis' if args.redis else ''}, {args.server_workers} API worker(s)"
                 + (" + a services process" if args.services_process else ""))
        log(f"Prefect server on port {port} ({setup}), PREFECT_HOME {home}")
        server_args = ["--workers", str(args.server_workers)] + (["--no-services"] if args.services_process else [])
        api_url, _ = ensure_prefect_server(stack, port, extra_args=server_args)
        if args.services_process:
            services_env = base_env(api_url)
            services_env.pop("PREFECT_API_URL")
            stack.start("prefect-services", [sys.executable, "-m", "prefect", "server", "services", "start"],
                        services_env)
        os.environ["PREFECT_API_URL"] = api_url  # before prefect is imported by this process
        runner = serve_deployments(stack, api_url, args.poll, args.runner_limit, args.executing)
        wait_for_deployments(api_url, DEPLOYMENTS, stack)
        log(f"Runner (python -m deployments.serve) pid {runner.pid}, PREFECT_RUNNER_POLL_FREQUENCY={args.poll}")

        from webhook.serve import ReceiverThread
        from webhook.settings import ReceiverSettings

        settings = ReceiverSettings(
            webhook_secrets=[SECRET], cooldown_s=0, prefect_api_url=api_url, port=0,
            data_dir=work / "upsell-data", receiver_db=work / "receiver.db",
        )
        receiver = ReceiverThread(settings).start()
        log(f"Receiver on {receiver.url}")
        sampler = Sampler(runner.pid)
        sampler.start()

        log("Baseline: one alert alone")
        base_items = new_items(1, "base")
        base_timings = asyncio.run(run_batch(receiver.url, api_url, base_items, args, log))
        base = Phase.of(base_items)

        time.sleep(3)  # let the baseline's flow process exit before the "before" figures
        before_children, _ = descendants(runner.pid)
        def measure_db() -> tuple[int, int, dict[str, int]]:
            """(bytes on disk, bytes in use, rows per table) of the server's database."""
            if pg_url is not None:
                from bench.postgres import database_contents

                size, rows = database_contents(pg_url)
                return size, size, rows
            return (db_bytes(home), *db_contents(home))

        before_rss = rss_mb(runner.pid)
        before_db, before_live, before_rows = measure_db()
        sampler.reset()
        waiting_figures: dict[str, Any] = {}

        def at_all_waiting() -> None:
            """The figures of N waiting runs, taken before any reply."""
            immediate, _ = descendants(runner.pid)
            waiting_figures["children_immediate"] = len(immediate)
            settle_deadline = time.monotonic() + args.settle
            alive, zombies = descendants(runner.pid)
            while alive and time.monotonic() < settle_deadline:
                time.sleep(0.5)
                alive, zombies = descendants(runner.pid)
            waiting_figures["children"] = len(alive)
            waiting_figures["zombies"] = zombies
            waiting_figures["settled_s"] = args.settle - max(0.0, settle_deadline - time.monotonic())
            waiting_figures["runner_rss"] = rss_mb(runner.pid)
            waiting_figures["db"], waiting_figures["live"], waiting_figures["rows"] = measure_db()
            waiting_figures["peak_children"] = sampler.peak_children
            waiting_figures["peak_children_rss"] = sampler.peak_children_rss_mb
            waiting_figures["peak_runner_rss"] = sampler.peak_runner_rss_mb
            sampler.reset()
            log(f"    all waiting: {len(alive)} flow processes alive, runner RSS {waiting_figures['runner_rss']:.0f}"
                f" MiB, database {waiting_figures['db'] / 1e6:.1f} MB")

        log(f"Burst: {args.n} alerts")
        items = new_items(args.n, "burst")
        timings = asyncio.run(run_batch(receiver.url, api_url, items, args, log, between=at_all_waiting))
        burst = Phase.of(items)
        after_resume_rss = rss_mb(runner.pid)
        peak_resume_children, peak_resume_rss = sampler.peak_children, sampler.peak_children_rss_mb
        cpu_upsell = {name: cpu_seconds(process.pid) for name, process in stack.processes}
        receiver.stop()
        receiver = None

        floor_items: list[Tracked] = []
        floor_timings: dict[str, float] = {}
        cpu_floor: dict[str, float] = {}
        if not args.no_floor:
            from bench.floor import DEPLOYMENT as FLOOR_DEPLOYMENT

            log(f"Floor: {args.n} alerts of {FLOOR_DEPLOYMENT} (suspends for the reply, no steps), same receiver"
                " settings, same runner limits; the upsell runner stopped")
            runner.terminate()
            runner.wait(timeout=30)
            stack.processes = [(name, process) for name, process in stack.processes if process is not runner]
            floor_env = base_env(api_url) | {"PREFECT_RUNNER_POLL_FREQUENCY": str(args.poll)}
            stack.start("floor-runner", [  # bench/floor.py's defaults are deployments.serve's
                sys.executable, str(REPO / "bench" / "floor.py"),
                *(["--executing", str(args.executing)] if args.executing else []),
                *(["--limit", str(args.runner_limit)] if args.runner_limit else []),
            ], floor_env)
            wait_for_deployments(api_url, [FLOOR_DEPLOYMENT], stack)
            receiver = ReceiverThread(settings.model_copy(update={
                "deployment_name": FLOOR_DEPLOYMENT, "receiver_db": work / "receiver-floor.db"})).start()
            floor_items = new_items(args.n, "floor")
            before_floor = {name: cpu_seconds(process.pid) for name, process in stack.processes}
            floor_timings = asyncio.run(run_batch(receiver.url, api_url, floor_items, args, log))
            cpu_floor = {name: cpu_seconds(process.pid) - before_floor.get(name, 0.0)
                         for name, process in stack.processes}
        floor = Phase.of(floor_items)

        # ---- the figures
        n = args.n
        triggered = [i for i in items if i.flow_run_id]
        answered = sum(1 for i in items if i.queued or i.flow_run_id)
        waiting = [i for i in items if i.waiting]
        completed = [i for i in items if i.final_state == "Completed"]
        outcome_completed = [i for i in items if i.outcome_status == "completed"]
        growth = waiting_figures.get("db", before_db) - before_db
        live_growth = waiting_figures.get("live", before_live) - before_live
        row_growth = {t: c - before_rows.get(t, 0) for t, c in waiting_figures.get("rows", {}).items()}
        top_rows = sorted(((c, t) for t, c in row_growth.items() if c > 0), reverse=True)[:6]
        server_log = (work / "logs" / "prefect-server.log").read_text(errors="replace")
        locked = server_log.count("(sqlite3.OperationalError) database is locked")  # once per failed transaction
        from deployments.serve import DEFAULT_EXECUTING, DEFAULT_LIMIT

        limit_text = (f"{args.runner_limit or DEFAULT_LIMIT} runs in flight, "
                      f"{args.executing or DEFAULT_EXECUTING} executing steps")
        t50, t95 = percentile(burst.trigger, 50), percentile(burst.trigger, 95)
        r50, r95 = percentile(burst.resume, 50), percentile(burst.resume, 95)
        b_t, b_r = percentile(base.trigger, 50), percentile(base.resume, 50)
        f_t50, f_t95 = percentile(floor.trigger, 50), percentile(floor.trigger, 95)
        f_r50, f_r95 = percentile(floor.resume, 50), percentile(floor.resume, 95)
        floor_breakdown = dict(start_breakdown(floor_items))

        rows = [
            ("alerts answered 202 (triggered + queued)", f"{answered}/{n}", "", f"{n}", ""),
            ("  of which spooled (202 queued)", f"{sum(1 for i in items if i.queued)}", "", "0", ""),
            ("runs created", f"{len(triggered)}/{n}", "", "", ""),
            ("runs Suspended on 'reply'", f"{len(waiting)}/{n}", "", f"{n}", ""),
            ("alert accepted -> flow Running p50", fmt(t50), fmt(b_t), "", ratio(t50, b_t)),
            ("alert accepted -> flow Running p95", fmt(t95), fmt(b_t), f"<= {TRIGGER_TARGET_P95_S:g} s "
             f"({verdict(t95, TRIGGER_TARGET_P95_S)})", ratio(t95, b_t)),
            ("alert accepted -> flow Running max", fmt(max(burst.trigger, default=None)), "", "", ""),
            *((f"  {label} p50 / p95", f"{fmt(percentile(values, 50))} / {fmt(percentile(values, 95))}",
               "", "", "") for label, values in start_breakdown(items)),
            ("first 202 -> all N waiting", fmt(timings.get("all_waiting_after_s"), digits=1),
             fmt(base_timings.get("all_waiting_after_s"), digits=1), "", ""),
            ("processes held by waiting runs", f"{waiting_figures.get('children', '-')}", "", "0 ("
             + verdict(waiting_figures.get("children"), 0) + ")", ""),
            ("  (alive when the last run suspended)", f"{waiting_figures.get('children_immediate', '-')}", "", "", ""),
            ("  (measured this long after it)", fmt(waiting_figures.get("settled_s"), digits=1), "", "", ""),
            ("  (flow processes before the burst)", f"{len(before_children)}", "", "", ""),
            ("peak concurrent flow processes (trigger)", f"{waiting_figures.get('peak_children', '-')}", "", "", ""),
            ("peak RSS of flow processes (trigger)", fmt(waiting_figures.get("peak_children_rss"), "MiB", 0),
             "", "", ""),
            ("runner RSS before the burst", fmt(before_rss, "MiB", 1), "", "", ""),
            ("runner RSS with N waiting", fmt(waiting_figures.get("runner_rss"), "MiB", 1), fmt(before_rss, "MiB", 1),
             "", ratio(waiting_figures.get("runner_rss"), before_rss)),
            ("runner RSS after the replies", fmt(after_resume_rss, "MiB", 1), "", "", ""),
            ("database before -> with N waiting", f"{before_db / 1e6:.2f} -> "
             f"{waiting_figures.get('db', before_db) / 1e6:.2f} MB", "", "", ""),
            ("database growth per waiting run (file+wal)", fmt(growth / n / 1024, "KiB", 1), "", "", ""),
            ("database growth per waiting run (pages used)", fmt(live_growth / n / 1024, "KiB", 1), "", "", ""),
            ("replies accepted (burst send time)", f"{sum(1 for i in items if i.resumed_at)}/{len(waiting)} in "
             f"{timings.get('reply_s', math.nan):.1f} s", "", "", ""),
            ("reply -> Completed p50", fmt(r50), fmt(b_r), "", ratio(r50, b_r)),
            ("reply -> Completed p95", fmt(r95), fmt(b_r),
             f"<= {RESUME_TARGET_P95_S:g} s ({verdict(r95, RESUME_TARGET_P95_S)})", ratio(r95, b_r)),
            ("reply -> Completed max", fmt(max(burst.resume, default=None)), "", "", ""),
            ("first reply -> all N Completed", fmt(timings.get("all_final_after_s"), digits=1),
             fmt(base_timings.get("all_final_after_s"), digits=1), "", ""),
            ("peak concurrent flow processes (resume)", f"{peak_resume_children}", "", "", ""),
            ("peak RSS of flow processes (resume)", fmt(peak_resume_rss, "MiB", 0), "", "", ""),
            ("ended Completed / outcome 'completed'", f"{len(completed)}/{n} / {len(outcome_completed)}/{n}",
             "", f"{n} / {n}", ""),
            ("'database is locked' errors in server log", f"{locked}", "", "0", ""),
        ]
        # the floor's figures next to the upsell's: same burst, same receiver and runner, a flow without steps
        floor_completed = sum(1 for i in floor_items if i.final_state == "Completed")
        floor_cells: dict[str, tuple[str, str]] = {
            "runs Suspended on 'reply'": (f"{sum(1 for i in floor_items if i.waiting)}/{n}", ""),
            "alert accepted -> flow Running p50": (fmt(f_t50), ratio(t50, f_t50)),
            "alert accepted -> flow Running p95": (fmt(f_t95), ratio(t95, f_t95)),
            "alert accepted -> flow Running max": (fmt(max(floor.trigger, default=None)), ""),
            **{f"  {label} p50 / p95": (f"{fmt(percentile(values, 50))} / {fmt(percentile(values, 95))}", "")
               for label, values in floor_breakdown.items()},
            "first 202 -> all N waiting": (fmt(floor_timings.get("all_waiting_after_s"), digits=1),
                                           ratio(timings.get("all_waiting_after_s"),
                                                 floor_timings.get("all_waiting_after_s"))),
            "reply -> Completed p50": (fmt(f_r50), ratio(r50, f_r50)),
            "reply -> Completed p95": (fmt(f_r95), ratio(r95, f_r95)),
            "reply -> Completed max": (fmt(max(floor.resume, default=None)), ""),
            "first reply -> all N Completed": (fmt(floor_timings.get("all_final_after_s"), digits=1),
                                               ratio(timings.get("all_final_after_s"),
                                                     floor_timings.get("all_final_after_s"))),
            "ended Completed / outcome 'completed'": (f"{floor_completed}/{n}", ""),
        } if floor_items else {}
        rows = [(r[0], r[1], r[2], floor_cells.get(r[0], ("", ""))[0], r[3], r[4], floor_cells.get(r[0], ("", ""))[1])
                for r in rows]
        headers = ("figure", f"burst N={n}", "baseline N=1", f"floor N={n}" if floor_items else "floor", "target",
                   "burst/base", "burst/floor")
        widths = [max(len(str(r[c])) for r in [headers, *rows]) for c in range(len(headers))]
        line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
        log("")
        log(f"Waiting benchmark: N={n}, Prefect server on {setup}, "
            f"PREFECT_RUNNER_POLL_FREQUENCY={args.poll}s, runner limit: {limit_text}, "
            f"{os.cpu_count()} CPUs, receiver cooldown_s=0, severity critical "
            "(FULL_AUTOMATION)")
        log(line(headers))
        log(line(["-" * w for w in widths]))
        for row in rows:
            log(line(row))
        log("CPU seconds used by each process until the upsell burst ended: " + ", ".join(
            f"{name} {seconds:.0f}" for name, seconds in cpu_upsell.items()))
        if cpu_floor:
            log(f"CPU seconds used during the floor's burst ({n} runs): " + ", ".join(
                f"{name} {seconds:.0f}" for name, seconds in cpu_floor.items()))
        log(f"this process (receivers, clients): {sum(os.times()[:2]):.0f} CPU seconds")
        log("rows added per waiting run: " + ", ".join(f"{t} {c / n:.1f}" for c, t in top_rows))
        log(f"host load average at the end: {os.getloadavg()[0]:.1f} (other processes on the machine count too)")
        problems = [(i.event_id, p) for i in [*base_items, *items, *floor_items] for p in i.problems]
        if problems:
            log(f"\n{len(problems)} problem(s):")
            for event_id, problem in problems[:20]:
                log(f"  {event_id}: {problem}")
        failed = False
        return 0
    except KeyboardInterrupt:
        reason = sampler.low_memory if sampler is not None and sampler.low_memory else "interrupted"
        log(f"Stopped: {reason}")
        return 130
    finally:
        if sampler is not None:
            sampler.stop()
        if receiver is not None:
            receiver.stop()
        stack.stop()
        if failed or args.keep:
            log(f"Kept {work} (logs in {work / 'logs'})")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
