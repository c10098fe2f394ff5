"""The Prefect API goes away under the receiver: 0 alerts lost, 0 duplicate runs.

    python bench/outage.py [--outage-s 60] [--rate 5] [--seed 1]

Starts its own Prefect server, a TCP proxy in front of it, and the receiver (`python -m webhook`) talking to
Prefect through the proxy. A sender posts signed alerts (one account each) at `--rate` per second, and sends
an alert again until the receiver accepts it (2xx), as a metrics system's webhook retries do. Then:

1. the proxy is **down** for `--outage-s` seconds (each connection closed at once); in the middle of it the
   receiver is **SIGKILLed** and started again;
2. the proxy **hangs** (accepts, reads, never answers) for 20 s; 3 s in, while the receiver's Prefect calls
   hang, it is SIGKILLed again and restarted;
3. the proxy forwards again; the bench waits for the receiver's spool to drain.

It prints the alerts accepted, and for each one the flow runs Prefect holds under its idempotency key: every
accepted alert must have exactly one (0 lost, 0 duplicates). Nobody serves the deployment: the runs stay
Scheduled and cost nothing. Not part of the test suite; everything it starts is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

from bench.upsells import own_prefect_server  # noqa: E402
from webhook.ports import free_port  # noqa: E402

SECRET = "bench-outage-secret-0123456789"
#: The report token of the receiver: /healthz shows the spool depth only to it.
REPORT_TOKEN = "bench-outage-report-token-0123"


class Proxy:
    """A TCP proxy with three modes: `forward`, `down` (closes every connection) and `hang` (never answers)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.mode = "forward"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)

    async def _listen(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "down":
            writer.transport.abort()
            return
        if self.mode == "hang":
            while await reader.read(65536):  # read on, answer nothing, until the client gives up
                pass
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if self.mode == "down":
                        break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def stop(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage-s", type=float, default=60)
    parser.add_argument("--rate", type=float, default=5, help="New alerts per second.")
    parser.add_argument("--drain-s", type=float, default=300, help="Longest wait for the spool to drain.")
    args = parser.parse_args()
    with own_prefect_server("outage") as (work, stack, api_url):
        proxy: Proxy | None = None
        try:
            from prefect.client.orchestration import get_client
            from prefect.client.schemas.filters import FlowFilter, FlowFilterName

            from flows.upsell import upsell
            from tasks.runtime.signing import sign

            upsell.to_deployment(name="outage").apply()
            proxy = Proxy(int(api_url.split(":")[-1].split("/")[0]))
            receiver_port = free_port()
            env = {**os.environ, "UPSELL_WEBHOOK_SECRETS": SECRET, "UPSELL_PORT": str(receiver_port),
                   "UPSELL_REPORT_TOKEN": REPORT_TOKEN,
                   "UPSELL_DATA_DIR": str(work / "data"), "UPSELL_DEPLOYMENT_NAME": "upsell/outage",
                   "UPSELL_PREFECT_API_URL": f"http://127.0.0.1:{proxy.port}/api",
                   "UPSELL_DISPATCH_INTERVAL_S": "1"}  # fmt: skip
            starts = 0

            def start_receiver() -> subprocess.Popen[bytes]:
                nonlocal starts
                starts += 1
                return stack.start(f"receiver-{starts}", [sys.executable, "-m", "webhook"], env)

            receiver = start_receiver()
            url = f"http://127.0.0.1:{receiver_port}"
            accepted: dict[str, dict] = {}
            answers: Counter[str] = Counter()
            stop = threading.Event()

            def send() -> None:
                pending: list[bytes] = []
                next_new = time.monotonic()
                with httpx.Client(base_url=url, timeout=30) as http:
                    while not stop.is_set():
                        if time.monotonic() >= next_new:
                            key = uuid.uuid4().hex[:12]
                            pending.append(json.dumps({
                                "event_id": f"outage-{key}", "account_id": f"outage-{key}",
                                "metric_type": "trade_volume", "current_value": 150.0, "threshold": 100.0,
                                "severity": "high"}).encode())  # fmt: skip
                            next_new += 1 / args.rate
                        if not pending:
                            time.sleep(0.02)
                            continue
                        body = pending[0]
                        try:
                            answer = http.post("/alerts", content=body, headers={
                                "content-type": "application/json", "X-Upsell-Signature": sign(body, SECRET)})
                        except httpx.HTTPError as exc:
                            answers[type(exc).__name__] += 1
                            time.sleep(0.2)
                            continue
                        answers[str(answer.status_code)] += 1
                        if answer.status_code < 300:
                            accepted[json.loads(body)["event_id"]] = answer.json()
                            pending.pop(0)
                        else:
                            time.sleep(0.2)

            def wait_up(timeout_s: float = 60) -> None:
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline:
                    try:
                        httpx.get(f"{url}/healthz", timeout=2)
                        return
                    except httpx.HTTPError:
                        time.sleep(0.2)

            def kill_and_restart(why: str) -> subprocess.Popen[bytes]:
                receiver.send_signal(signal.SIGKILL)
                receiver.wait()
                print(f"  {time.monotonic() - t0:5.1f}s: receiver SIGKILLed ({why}); restarting", flush=True)
                return start_receiver()

            wait_up()
            sender = threading.Thread(target=send, daemon=True)
            t0 = time.monotonic()
            sender.start()
            time.sleep(10)
            print(f"  {time.monotonic() - t0:5.1f}s: Prefect API down for {args.outage_s:g}s", flush=True)
            proxy.mode = "down"
            time.sleep(args.outage_s / 2)
            receiver = kill_and_restart("during the outage")
            time.sleep(args.outage_s / 2)
            proxy.mode = "forward"
            print(f"  {time.monotonic() - t0:5.1f}s: Prefect API back", flush=True)
            time.sleep(10)
            proxy.mode = "hang"
            print(f"  {time.monotonic() - t0:5.1f}s: Prefect API hangs", flush=True)
            time.sleep(3)
            receiver = kill_and_restart("while its Prefect calls hang")
            time.sleep(17)
            proxy.mode = "forward"
            print(f"  {time.monotonic() - t0:5.1f}s: Prefect API answers again", flush=True)
            time.sleep(10)
            stop.set()
            sender.join(60)
            sent_until = time.monotonic() - t0

            deadline = time.monotonic() + args.drain_s
            health: dict = {}
            while time.monotonic() < deadline:
                try:
                    health = httpx.get(f"{url}/healthz", timeout=5,
                                       headers={"authorization": f"Bearer {REPORT_TOKEN}"}).json()
                    if health.get("spool_depth") == 0:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(1)
            drained = time.monotonic() - t0 - sent_until

            with get_client(sync_client=True) as client:
                runs = []
                while True:
                    page = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["upsell"])),
                                                 limit=200, offset=len(runs))  # fmt: skip
                    runs += page
                    if len(page) < 200:
                        break
            per_key = Counter(r.idempotency_key for r in runs)
            runs_of = [per_key.get(f"upsell:{event}", 0) for event in accepted]
            queued_first = sum(1 for a in accepted.values() if a.get("queued"))
            print(f"\n{len(accepted)} alerts accepted in {sent_until:.0f}s ({queued_first} of them spooled first); "
                  f"answers {dict(answers)}; receiver starts {starts}")  # fmt: skip
            print(f"spool drained {drained:.0f}s after the last alert (depth {health.get('spool_depth')})")
            print(f"runs per accepted alert: {dict(Counter(runs_of))}; lost (0 runs): {runs_of.count(0)}; "
                  f"duplicated (>1 run): {sum(1 for n in runs_of if n > 1)}; runs in Prefect: {len(runs)}")
        finally:
            if proxy is not None:
                proxy.stop()


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    main()
