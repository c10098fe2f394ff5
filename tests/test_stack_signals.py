"""Stopping the local stack: SIGTERM to `upsell up` stops every process it started and frees their ports, and
the runner stops within its grace even when the Prefect server went first. Also the one end-to-end check that
`upsell up --receiver-port` makes the runs' emailed links point at that port, and that it records where its
stack is for the commands of another shell."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import httpx
import pytest

from deployments.serve import STOP_GRACE_S
from deployments.stack import StackRecord, port_is_free, stack_file, stop_process
from tasks.runtime.signing import sign
from tests.support import outbox_email
from webhook.ports import free_port

REPO = Path(__file__).resolve().parent.parent
SECRET = "stack-signals-secret-0123456789"


class CuttableProxy:
    """A TCP relay in front of the Prefect API; `cut()` closes it and every connection through it, which is what a
    runner sees when the Prefect server stops before it (connections refused from then on)."""

    def __init__(self, target: str) -> None:
        url = httpx.URL(target)
        self._target = (url.host, url.port or 80)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}{url.path}"
        self._open = True
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="cuttable-proxy", daemon=True).start()

    def _accept(self) -> None:
        while self._open:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self._target)
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._relay, args=(source, sink), daemon=True).start()

    @staticmethod
    def _relay(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self._open = False
        self._listener.close()
        with self._lock:
            for end in self._sockets:
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()


def _wait_until_polling(api_url: str, deployment: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Block until the runner polls for `deployment`'s runs (Prefect marks it READY): its runner has started."""
    deadline = time.monotonic() + 90
    with httpx.Client(base_url=api_url.rstrip("/") + "/", timeout=5) as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-2000:]
            found = client.get(f"deployments/name/{deployment}")
            if found.status_code == 200 and found.json()["status"] == "READY":
                return
            time.sleep(0.5)
    raise TimeoutError(f"the runner did not start polling:\n{log.read_text()[-2000:]}")


def test_the_runner_stops_within_its_grace_when_the_prefect_server_went_first(
    prefect_server: str, data_dir: Path, tmp_path: Path
) -> None:
    proxy = CuttableProxy(prefect_server)
    suffix = f"stop-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "runner.log"
    env = {**os.environ, "PREFECT_API_URL": proxy.url, "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "UPSELL_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}  # fmt: skip
    with log.open("wb") as out:
        runner = subprocess.Popen(
            [sys.executable, "-m", "deployments.serve", "--sweep-interval", "0", "--no-rate-limits",
             "--name-suffix", suffix],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_until_polling(proxy.url, f"upsell/upsell-{suffix}", runner, log)
        proxy.cut()  # the Prefect server is gone: every call of the runner is refused, and Prefect retries them
        asked = time.monotonic()
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=STOP_GRACE_S + 10)  # before: over 80 s of retries pausing the schedules
        took = time.monotonic() - asked
    finally:
        stop_process(runner, timeout_s=5)
    assert took < STOP_GRACE_S + 5, log.read_text()[-3000:]
    assert "The Prefect API does not answer: stopping without pausing the schedules" in log.read_text()


# ---- upsell up ----


def _children(pid: int) -> set[int]:
    """The processes `pid` started, and theirs (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def upsell_up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, dict[str, int]]]:
    """`upsell up` on free ports with a Prefect server of its own (its own PREFECT_HOME), as a user starts it;
    whatever is left of it at the end is killed by PID."""
    ports = {"receiver": free_port(), "prefect": free_port()}
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "UPSELL_PUBLIC_BASE_URL", "UPSELL_PORT")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "UPSELL_DATA_DIR": str(tmp_path / "data"),
            "UPSELL_WEBHOOK_SECRETS": SECRET, "PYTHONUNBUFFERED": "1"}  # fmt: skip
    output = tmp_path / "up.log"
    with output.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "deployments.cli", "up", "--receiver-port", str(ports["receiver"]),
             "--prefect-port", str(ports["prefect"])],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        while "Press Ctrl-C" not in output.read_text():
            assert up.poll() is None and time.monotonic() < deadline, output.read_text()[-3000:]
            time.sleep(0.5)
        started = _children(up.pid)
        yield up, tmp_path, ports
    finally:
        for pid in {*started, up.pid}:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        up.wait()


def _email_for(outbox: Path, event_id: str, timeout_s: float = 90) -> EmailMessage:
    path = outbox_email(outbox, event_id)
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"no email for {event_id} in {outbox}"
        time.sleep(0.5)
    with path.open("rb") as handle:
        message = BytesParser(policy=policy.default).parse(handle)
    assert isinstance(message, EmailMessage)
    return message


def test_upsell_up_links_to_its_receiver_port_and_sigterm_stops_everything_it_started(
    upsell_up: tuple[subprocess.Popen[bytes], Path, dict[str, int]],
) -> None:
    up, work, ports = upsell_up
    receiver = f"http://127.0.0.1:{ports['receiver']}"
    banner = (work / "up.log").read_text()
    assert f"Links sent      {receiver}" in banner
    api_url = f"http://127.0.0.1:{ports['prefect']}/api"
    assert f"export PREFECT_API_URL={api_url}" in banner
    record = StackRecord.model_validate_json(stack_file(work / "data").read_text())
    assert record == StackRecord(prefect_api_url=api_url, ui_url=f"http://127.0.0.1:{ports['prefect']}",
                                 receiver_url=receiver, pid=up.pid)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # a second shell, same data folder
    env |= {"UPSELL_DATA_DIR": str(work / "data"), "PREFECT_HOME": str(work / "other-prefect-home")}
    listed = subprocess.run([sys.executable, "-m", "deployments.cli", "runs", "--json"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr  # the stack's own server
    started = _children(up.pid)
    assert len(started) >= 3, started  # the Prefect server, the runner, the receiver (and what they started)

    event_id = f"evt-{uuid.uuid4().hex[:12]}"
    body = json.dumps({"event_id": event_id, "account_id": "12345", "metric_type": "trade_volume",
                       "current_value": 150, "threshold": 100, "severity": "critical"}).encode()  # fmt: skip
    headers = {"Content-Type": "application/json", "X-Upsell-Signature": sign(body, SECRET)}
    accepted = httpx.post(f"{receiver}/alerts", content=body, headers=headers, timeout=30)
    assert accepted.status_code == 202, accepted.text
    email = _email_for(work / "data" / "outbox", event_id)
    unsubscribe = str(email["List-Unsubscribe"])
    assert unsubscribe.startswith(f"<{receiver}/unsubscribe/"), unsubscribe
    parts = [part.get_content() for part in email.walk() if part.get_content_type() in ("text/plain", "text/html")]
    assert parts and all(f"{receiver}/" in part for part in parts)
    assert not any("127.0.0.1:8000" in part for part in parts)

    asked = time.monotonic()
    up.send_signal(signal.SIGTERM)
    up.wait(timeout=90)
    took = time.monotonic() - asked
    assert up.returncode == 0, (work / "up.log").read_text()[-3000:]
    assert "Stopped every process started by `upsell up`." in (work / "up.log").read_text()
    assert not stack_file(work / "data").exists()
    assert not [pid for pid in started if _alive(pid)]
    assert port_is_free(ports["receiver"]) and port_is_free(ports["prefect"])
    assert took < 60, took
