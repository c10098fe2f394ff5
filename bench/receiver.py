"""Receiver benchmark (not part of the test suite).

1. Raw Prefect: flow runs/s created with `create_flow_run_from_deployment` straight against the server.
2. Receiver: signed alerts/s that end as created flow runs (POST /alerts -> 202 triggered), same server, same
   concurrency; printed with the ratio to (1) (target >= 0.8). The two alternate over `--rounds` rounds (raw
   first in odd rounds, receiver first in even ones), so the server's drift as its database grows falls on
   both alike; each rate is total runs over total seconds.
3. Spool: alerts/s accepted into the spool (202 queued) with the Prefect API stopped (target >= 1,000/s), and
   its baseline measured in the same run: the same client posting the same signed bodies to the smallest
   FastAPI endpoint under uvicorn (`minimal_app`: read the body, answer 202), which is what the machine allows
   any FastAPI receiver; printed as a ratio to it.

It starts its own Prefect server and receiver as subprocesses (own PREFECT_HOME and database) and stops them
by PID. Example: `.venv/bin/python bench/receiver.py --runs 300 --spool 3000 --concurrency 8`
(`--database postgres`: the Prefect server on a throwaway PostgreSQL cluster instead of SQLite.)
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from fastapi import FastAPI, Request  # module level: the handlers' annotations resolve here
from fastapi.responses import JSONResponse

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from deployments.stack import stop_process  # noqa: E402 - after sys.path, so `python bench/receiver.py` finds it

SECRET = "bench-secret-0123456789abcdef"
#: The report token of the receiver: /healthz shows the spool depth only to it.
REPORT_TOKEN = "bench-report-token-0123456789"
DETAILS = {"authorization": f"Bearer {REPORT_TOKEN}"}
print = functools.partial(print, flush=True)  # noqa: A001 - progress shows while the bench runs



def wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def start_prefect(home: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=(home / "server.log").open("ab"), stderr=subprocess.STDOUT,
    )
    wait_http(f"http://127.0.0.1:{port}/api/health", proc)
    return proc


def spool_depth(url: str) -> int:
    """The receiver's spool depth (a /healthz detail, shown to the report's token only)."""
    return int(httpx.get(f"{url}/healthz", headers=DETAILS).json()["spool_depth"])


def minimal_app():  # noqa: ANN201 - an ASGI app, for `uvicorn --factory`
    """The spool's baseline: a FastAPI endpoint that reads the body and answers 202, nothing else."""
    app = FastAPI()

    @app.post("/alerts")
    async def accept(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"queued": True}, status_code=202)

    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def minimal_rate(n: int, concurrency: int, log: Path) -> float:
    """Alerts/s the same client gets from `minimal_app` under uvicorn (one worker, as the receiver)."""
    from webhook.ports import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "bench.receiver:minimal_app", "--port", str(port),
         "--log-level", "warning", "--no-access-log"], cwd=REPO, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", proc)
        seconds, ok = asyncio.run(post_all(url, alert_bodies(n, "floor"), concurrency, "queued"))
        if ok != n:
            raise RuntimeError(f"the minimal endpoint accepted {ok} of {n} posts")
        return ok / seconds
    finally:
        stop_process(proc)


def alert_bodies(n: int, tag: str) -> list[bytes]:
    return [
        json.dumps({
            "event_id": f"bench-{tag}-{i}-{uuid.uuid4().hex[:6]}", "account_id": f"bench-{tag}-{i}",
            "metric_type": "trade_volume", "current_value": 150.0, "threshold": 100.0, "severity": "high",
        }).encode()
        for i in range(n)
    ]


async def post_all(url: str, bodies: list[bytes], concurrency: int, want: str) -> tuple[float, int]:
    """POST every body (signed just before sending), `concurrency` at a time; (seconds, answers with `want`)."""
    from tasks.runtime.signing import sign

    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    ok = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal ok
        while not queue.empty():
            body = queue.get_nowait()
            headers = {"content-type": "application/json", "X-Upsell-Signature": sign(body, SECRET)}
            response = await client.post("/alerts", content=body, headers=headers)
            if response.status_code == 202 and response.json().get(want):
                ok += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return time.perf_counter() - started, ok


async def raw_rate(api_url: str, deployment: str, n: int, concurrency: int) -> float:
    """Seconds to create `n` flow runs directly (deployment id read once), with the receiver's parameters."""
    from prefect.client.orchestration import PrefectClient
    from prefect.exceptions import PrefectHTTPStatusError

    from flows.api import run_tags
    from flows.models import AutomationLevel, UsageAlert

    async with PrefectClient(api=api_url) as client:
        dep = await client.read_deployment_by_name(deployment)
        alerts = [UsageAlert.model_validate_json(b) for b in alert_bodies(n, "raw")]
        queue: asyncio.Queue[UsageAlert] = asyncio.Queue()
        for alert in alerts:
            queue.put_nowait(alert)

        async def worker() -> None:
            while not queue.empty():
                alert = queue.get_nowait()
                while True:  # a busy SQLite server answers 503: retry, as the receiver's spool does
                    try:
                        await client.create_flow_run_from_deployment(
                            dep.id,
                            parameters={"alert": alert.model_dump(mode="json"), "automation_level": "HYBRID"},
                            idempotency_key=f"upsell:{alert.event_id}",
                            tags=run_tags(alert, AutomationLevel.HYBRID),
                        )
                        break
                    except PrefectHTTPStatusError as exc:
                        if exc.response.status_code < 500:
                            raise
                        await asyncio.sleep(0.1)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


async def count_runs(api_url: str, deployment: str) -> int:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with PrefectClient(api=api_url) as client:
        dep = await client.read_deployment_by_name(deployment)
        return await client.count_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300, help="Flow runs created per phase (raw and receiver).")
    parser.add_argument("--spool", type=int, default=3000, help="Alerts posted with the Prefect API down.")
    parser.add_argument("--concurrency", type=int, default=8, help="Concurrent requests.")
    parser.add_argument("--rounds", type=int, default=3, help="Alternating raw/receiver rounds (default 3).")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite",
                        help="The Prefect server's database (default sqlite, as `upsell up`).")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="upsell-bench-"))
    from webhook.ports import free_port

    prefect_port, receiver_port = free_port(), free_port()
    api_url = f"http://127.0.0.1:{prefect_port}/api"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "UPSELL_"))}
    prefect_env = base_env | {
        "PREFECT_HOME": str(work / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{work / 'prefect.db'}",
        # Nothing executes the runs created here. Left on, the late-runs service would sweep the thousands of
        # Scheduled runs into Late (a state change and an event each) at moments that land in one phase or
        # the other, which is the "third round slower" drift of earlier figures, not the receiver.
        "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    }
    (work / "prefect").mkdir()
    from deployments.stack import Stack

    stack = Stack(log_dir=work / "logs")  # PostgreSQL, when asked for
    server = receiver = None
    try:
        if args.database == "postgres":
            from bench.postgres import start_postgres

            prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"] = start_postgres(stack, work)
        print(f"starting Prefect server on {api_url} (home {work})")
        server = start_prefect(work, prefect_port, prefect_env)
        deploy_env = base_env | {"PREFECT_API_URL": api_url, "PREFECT_HOME": str(work / "prefect"),
                                 "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        subprocess.run(
            [sys.executable, "-c", "from flows.upsell import upsell; upsell.to_deployment(name='bench').apply()"],
            cwd=REPO, env=deploy_env, check=True, capture_output=True,
        )
        receiver_env = deploy_env | {
            "UPSELL_WEBHOOK_SECRETS": SECRET, "UPSELL_PORT": str(receiver_port), "UPSELL_DATA_DIR": str(work),
            "UPSELL_REPORT_TOKEN": REPORT_TOKEN,
            "UPSELL_PREFECT_API_URL": api_url, "UPSELL_DEPLOYMENT_NAME": "upsell/bench",
            "UPSELL_DISPATCH_INTERVAL_S": "1",  # the receiver's default Prefect timeout (5 s), as deployed
        }
        receiver = subprocess.Popen([sys.executable, "-m", "webhook"], cwd=REPO, env=receiver_env,
                                    stdout=(work / "receiver.log").open("ab"), stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{receiver_port}"
        wait_http(f"{url}/healthz", receiver)

        asyncio.run(raw_rate(api_url, "upsell/bench", 20, 4))  # warm up both paths
        asyncio.run(post_all(url, alert_bodies(20, "warm"), 4, "triggered"))

        per_round = max(1, args.runs // args.rounds)
        raw_s = receiver_s = 0.0
        raw_n = receiver_n = spooled = 0
        for round_no in range(1, args.rounds + 1):
            order = ["raw", "receiver"] if round_no % 2 else ["receiver", "raw"]
            figures = {}
            for path in order:
                time.sleep(2)  # let the server's event services catch up with the previous phase
                if path == "raw":
                    seconds = asyncio.run(raw_rate(api_url, "upsell/bench", per_round, args.concurrency))
                    raw_s, raw_n = raw_s + seconds, raw_n + per_round
                    figures[path] = per_round / seconds
                    continue
                before = asyncio.run(count_runs(api_url, "upsell/bench"))
                started = time.perf_counter()
                _, triggered = asyncio.run(
                    post_all(url, alert_bodies(per_round, f"rcv{round_no}"), args.concurrency, "triggered"))
                # an alert the busy API did not answer in time is spooled and replayed: it counts once its run exists
                while spool_depth(url) and time.perf_counter() - started < 600:
                    time.sleep(0.05)
                seconds = time.perf_counter() - started
                created = asyncio.run(count_runs(api_url, "upsell/bench")) - before
                receiver_s, receiver_n = receiver_s + seconds, receiver_n + created
                spooled += per_round - triggered
                figures[path] = created / seconds
            print(f"round {round_no} ({' then '.join(order)}): raw {figures['raw']:.1f} runs/s, receiver "
                  f"{figures['receiver']:.1f} alerts/s, ratio {figures['receiver'] / figures['raw']:.2f}")
        raw, via_receiver = raw_n / raw_s, receiver_n / receiver_s
        total = asyncio.run(count_runs(api_url, "upsell/bench"))
        print(f"Prefect server database          : {args.database}")
        print(f"raw Prefect create-flow-run rate : {raw:8.1f} runs/s   ({raw_n} runs, concurrency "
              f"{args.concurrency}, {args.rounds} rounds)")
        print(f"receiver, signed alerts -> runs  : {via_receiver:8.1f} alerts/s ({receiver_n} runs; "
              f"{receiver_n - spooled} triggered at once, {spooled} via the spool)")
        print(f"ratio receiver / raw             : {via_receiver / raw:8.2f}   (target >= 0.8)")
        print(f"flow runs on the server          : {total} (expected {raw_n + receiver_n + 40})")

        stop_process(server)
        server = None
        asyncio.run(post_all(url, alert_bodies(1, "detect"), 1, "queued"))  # the first one finds the API down
        seconds, queued = asyncio.run(post_all(url, alert_bodies(args.spool, "spool"), args.concurrency, "queued"))
        depth = spool_depth(url)
        floor = minimal_rate(args.spool, args.concurrency, work / "minimal.log")
        print(f"spool, API down                  : {queued / seconds:8.1f} alerts/s ({queued}/{args.spool} queued, "
              f"spool depth {depth})  (target >= 1000)")
        print(f"minimal FastAPI endpoint (floor) : {floor:8.1f} alerts/s, same client and concurrency")
        print(f"ratio spool / minimal endpoint   : {queued / seconds / floor:8.2f}")

        server = start_prefect(work, prefect_port, prefect_env)
        started = time.perf_counter()
        while spool_depth(url) and time.perf_counter() - started < 600:
            time.sleep(0.5)
        drained = time.perf_counter() - started
        print(f"spool replay after restart       : {depth} alerts in {drained:.1f}s ({depth / drained:.1f}/s)")
    finally:
        stop_process(receiver)
        stop_process(server)
        stack.stop()


if __name__ == "__main__":
    main()
