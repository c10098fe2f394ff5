"""Starting and stopping the local processes: a Prefect server (SQLite) and the deployment runner."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

DEFAULT_PREFECT_PORT = 4200


def api_is_up(api_url: str, timeout_s: float = 2.0) -> bool:
    """True when a Prefect API answers its health check at `api_url`."""
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


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

    def stop(self) -> None:
        for _name, process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _name, process in reversed(self.processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()


def base_env(api_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PREFECT_API_URL"] = api_url
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
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
    extra_env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Serve the deployments (`python -m deployments.serve`, with `extra_args` added) in a child process."""
    env = base_env(api_url)
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
