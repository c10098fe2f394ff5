"""Starting and stopping the local processes: a Prefect server (SQLite) and the deployment runner.

Imports nothing of Prefect (the benchmarks set PREFECT_HOME after importing it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx
from pydantic import BaseModel, ValidationError

DEFAULT_PREFECT_PORT = 4200
#: How long one process of the stack gets to stop after SIGTERM before it is killed.
STOP_TIMEOUT_S = 20.0
#: The signals that stop a command holding a stack: Ctrl-C, `kill`, and the terminal closing.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def api_is_up(api_url: str, timeout_s: float = 2.0) -> bool:
    """True when a Prefect API answers its health check at `api_url`."""
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


class StackRecord(BaseModel):
    """Where a running `upsell up` is, as it writes it in <data_dir>/stack.json for the other `upsell` commands."""

    prefect_api_url: str
    ui_url: str
    receiver_url: str
    pid: int


def stack_file(data_dir: Path) -> Path:
    """Where `upsell up` records its stack while it runs."""
    return data_dir / "stack.json"


def write_stack_record(data_dir: Path, record: StackRecord) -> Path:
    """Write the record atomically (a reader sees the old file or the new one, never half of it)."""
    path = stack_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(record.model_dump_json(indent=2) + "\n")
    os.replace(partial, path)
    return path


def read_stack_record(data_dir: Path) -> StackRecord | None:
    """The recorded stack, or None when there is none (or the file is not one `upsell up` wrote)."""
    try:
        return StackRecord.model_validate_json(stack_file(data_dir).read_bytes())
    except (OSError, ValidationError):
        return None


def remove_stack_record(data_dir: Path, pid: int) -> None:
    """Remove the record if process `pid` wrote it (a later `upsell up` of the same data folder keeps its own)."""
    record = read_stack_record(data_dir)
    if record is not None and record.pid == pid:
        stack_file(data_dir).unlink(missing_ok=True)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0


def stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float = 20) -> None:
    """SIGTERM one child process, SIGKILL it if it is still there after `timeout_s`, and reap it."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Stack:
    """Processes this command started (and only those): stopped by PID, in reverse order."""

    log_dir: Path
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("wb")
        process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append((name, process))
        return process

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the processes in reverse start order, each gone before the next is asked: a process may need the
        ones started before it to stop cleanly (the runner pauses its schedules through the Prefect server).

        A signal arriving meanwhile (a second Ctrl-C) is ignored: stopping halfway would leave ports held.
        """
        with _signals_ignored():
            for _name, process in reversed(self.processes):
                _stop_group(process, timeout_s)
            self.processes.clear()


def _stop_group(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM the process group a stack process leads, SIGKILL it after `timeout_s`, and reap the leader."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:  # it ended between the poll and the signal
        process.wait()


@contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def interrupted_by_stop_signals() -> Iterator[None]:
    """Inside the block, SIGTERM and SIGHUP raise KeyboardInterrupt as Ctrl-C does, so `kill <pid>` (a service
    manager, a closed terminal) runs the same `finally: stack.stop()` and leaves no process of the stack behind.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def base_env(api_url: str, receiver_port: int | None = None) -> dict[str, str]:
    """The environment of a process of the stack: this one's, with the Prefect API, and the receiver's port when
    known, so that the receiver and the runs agree on its address (the links of the emails and Slack messages
    follow UPSELL_PORT unless UPSELL_PUBLIC_BASE_URL is set: `tasks.runtime.settings`)."""
    env = dict(os.environ)
    env["PREFECT_API_URL"] = api_url
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if receiver_port is not None:
        env["UPSELL_PORT"] = str(receiver_port)
    return env


def ensure_prefect_server(
    stack: Stack, port: int = DEFAULT_PREFECT_PORT, timeout_s: float = 90, extra_args: list[str] | None = None
) -> tuple[str, bool]:
    """The API URL to use: PREFECT_API_URL if set, a server already on `port`, or one started now (with
    `extra_args` added to `prefect server start`, e.g. `--workers 2`).

    Returns (api_url, started_here).
    """
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        if not api_is_up(configured):
            raise RuntimeError(f"PREFECT_API_URL={configured} does not answer /health")
        return configured, False
    api_url = f"http://127.0.0.1:{port}/api"
    if api_is_up(api_url):
        return api_url, False
    if not port_is_free(port):
        raise RuntimeError(f"port {port} is taken by something that is not a Prefect server")
    env = base_env(api_url)
    env.pop("PREFECT_API_URL")  # the server itself does not need a client URL
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_UI_API_URL"] = api_url
    process = stack.start(
        "prefect-server",
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
         *(extra_args or [])],
        env,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Prefect server exited:\n{stack.log_tail('prefect-server')}")
        if api_is_up(api_url):
            return api_url, True
        time.sleep(0.5)
    raise TimeoutError(f"the Prefect server did not answer within {timeout_s:.0f}s")


def start_runner(
    stack: Stack,
    api_url: str,
    *,
    sweep_interval_s: int = 300,
    poll_s: int = 2,
    receiver_port: int | None = None,
    extra_env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Serve the deployments (`python -m deployments.serve`, with `extra_args` added) in a child process; the
    links its runs send point at the receiver on `receiver_port` (unless UPSELL_PUBLIC_BASE_URL is set)."""
    env = base_env(api_url, receiver_port)
    env["PREFECT_RUNNER_POLL_FREQUENCY"] = str(poll_s)
    env.update(extra_env or {})
    return stack.start(
        "runner",
        [sys.executable, "-m", "deployments.serve", "--sweep-interval", str(sweep_interval_s), *(extra_args or [])],
        env,
    )


def wait_for_deployments(api_url: str, names: list[str], stack: Stack, timeout_s: float = 90) -> None:
    """Block until every named deployment exists (the runner registers them when it starts)."""
    deadline = time.monotonic() + timeout_s
    pending = list(names)
    with httpx.Client(base_url=api_url.rstrip("/") + "/", timeout=5) as client:
        while pending and time.monotonic() < deadline:
            for name, process in stack.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited:\n{stack.log_tail(name)}")
            pending = [n for n in pending if client.get(f"deployments/name/{n}").status_code != 200]
            if pending:
                time.sleep(0.5)
    if pending:
        raise TimeoutError(f"deployments not registered after {timeout_s:.0f}s: {', '.join(pending)}")
