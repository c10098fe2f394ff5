"""A MongoDB-wire server for the tests: nx-27017 in its own venv (see ../shared/MONGO.md), on a free port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pymongo import MongoClient

from webhook.ports import free_port

NX_PINS = ("nx-27017==0.8.1", "neosqlite==1.17.2")
#: Reused between runs when it exists and works: building it takes about a minute.
CACHED_VENV = Path(tempfile.gettempdir()) / "upsell-nx-venv-0.8.1"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _works(venv: Path) -> bool:
    python = _venv_python(venv)
    if not python.exists():
        return False
    check = subprocess.run([python, "-c", "import nx_27017.nx_27017"], capture_output=True, timeout=60)
    return check.returncode == 0


def nx_venv() -> Path:
    """The venv holding nx-27017: the cached one, or a new one built beside it and moved into place."""
    if _works(CACHED_VENV):
        return CACHED_VENV
    build = Path(tempfile.mkdtemp(prefix="upsell-nx-build-"))
    venv = build / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([_venv_python(venv), "-m", "pip", "install", "-q", *NX_PINS], check=True)
    # Started as `python -m` (not the console script), so the venv keeps working after the move.
    try:
        shutil.rmtree(CACHED_VENV, ignore_errors=True)
        os.replace(venv, CACHED_VENV)
        return CACHED_VENV
    except OSError:
        return venv  # another run moved its venv in first; use ours from where it is



class NxServer:
    """One nx-27017 process (in-memory SQLite); stopped by its PID."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="upsell-nx-"))
        self.port = free_port()
        self.uri = f"mongodb://127.0.0.1:{self.port}"
        self.pid_file = self.workdir / "nx.pid"
        self.log_file = self.workdir / "nx.log"
        self.process = subprocess.Popen(
            [
                _venv_python(nx_venv()),
                "-m",
                "nx_27017.nx_27017",
                "--db",
                "memory",
                "--host",
                "127.0.0.1",
                "-p",
                str(self.port),
                "--pid-file",
                str(self.pid_file),
                "--log-file",
                str(self.log_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"nx-27017 exited: {self.log_file.read_text()[-2000:] if self.log_file.exists() else ''}"
                )
            try:
                with MongoClient(self.uri, serverSelectionTimeoutMS=500) as client:
                    client.admin.command("ping")
                return
            except Exception:  # not listening yet
                time.sleep(0.1)
        raise TimeoutError(f"nx-27017 did not answer ping on {self.uri}")

    def stop(self) -> None:
        pid = self.process.pid
        if self.pid_file.exists():
            pid = int(self.pid_file.read_text().strip() or pid)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
