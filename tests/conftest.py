"""Session fixtures: one Prefect test server for the whole run, per-test data folders, a served runner."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

# Before Prefect is imported: no telemetry (no outside network here), a private PREFECT_HOME, quick retries.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="upsell-tests-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect-home")
os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "true"
os.environ.setdefault("UPSELL_RETRY_BASE_DELAY_S", "0.05")
os.environ["UPSELL_PAUSE_POLL_S"] = "1"
# One link secret for every process of the session (this one, the served runner, the receivers), so each checks
# the links the others signed; without it each test's fresh data folder would get a secret of its own.
os.environ["UPSELL_LINK_SECRET"] = secrets.token_urlsafe(36)  # 48 characters

import pytest  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.settings import PREFECT_API_URL  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from deployments.stack import stop_process  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def prefect_server() -> Iterator[str]:
    """One Prefect test server (SQLite) for the session; yields its API URL.

    The harness puts its database in a new temporary folder: in memory (/dev/shm) where the machine has one, since
    every state change of every run is a write and the suite makes thousands of them.
    """
    with ExitStack() as stack:
        with _temporary_files_in_memory():
            stack.enter_context(prefect_test_harness(server_startup_timeout=60))
        yield str(PREFECT_API_URL.value())


@contextmanager
def _temporary_files_in_memory() -> Iterator[None]:
    """New temporary folders go to /dev/shm while inside, when the machine has it."""
    shm = Path("/dev/shm")
    previous = tempfile.tempdir
    if shm.is_dir() and os.access(shm, os.W_OK):
        tempfile.tempdir = str(shm)
    try:
        yield
    finally:
        tempfile.tempdir = previous


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data folder per test for the local stand-ins (outbox, records, SQLite store)."""
    path = tmp_path / "upsell-data"
    monkeypatch.setenv("UPSELL_DATA_DIR", str(path))
    return path


@pytest.fixture
def event_id() -> str:
    return f"evt-{uuid.uuid4().hex[:12]}"


class Runner:
    """A `python -m deployments.serve` process serving the deployments against the test server.

    By default it serves the main set (`upsell/upsell`, ...), in threads. `name_suffix` serves a set of its own
    (`upsell/upsell-<suffix>`, ...) that the session's runner never takes runs of; `serve_args` adds options
    (`--processes`), `launcher` replaces `-m deployments.serve` (e.g. `-c` code calling `main`), `env` adds
    variables.
    """

    def __init__(
        self,
        api_url: str,
        data_dir: Path,
        *,
        name_suffix: str = "",
        serve_args: Sequence[str] = (),
        launcher: Sequence[str] = ("-m", "deployments.serve"),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.suffix = f"-{name_suffix}" if name_suffix else ""
        self.log_path = data_dir.parent / f"runner{self.suffix}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        process_env = {
            **os.environ,
            "PREFECT_API_URL": api_url,
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "UPSELL_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        args = ["--sweep-interval", "0", "--no-rate-limits", *serve_args]
        if name_suffix:
            args += ["--name-suffix", name_suffix]
        self._log = self.log_path.open("w")
        self._command = [sys.executable, *launcher, *args]
        self._env = process_env
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self._command, cwd=REPO, env=self._env, stdout=self._log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """SIGKILL the serving process, as a lost machine would: its runs are left as they were."""
        self.process.kill()
        self.process.wait()

    def restart(self, env: Mapping[str, str] | None = None) -> None:
        """Start the serving process again (after `kill`, or after it died), with `env` added if given."""
        self._env = {**self._env, **(env or {})}
        self.process = self._start()
        self.wait_ready()

    @property
    def upsell_deployment(self) -> str:
        return f"upsell/upsell{self.suffix}"

    def wait_ready(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"runner exited: {self.log_path.read_text()[-2000:]}")
                try:
                    client.read_deployment_by_name(self.upsell_deployment)
                    client.read_deployment_by_name(f"reply-timeouts/reply-timeouts{self.suffix}")
                    return
                except Exception:
                    time.sleep(0.5)
        raise TimeoutError(f"runner not ready: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


@pytest.fixture(scope="session")
def runner(prefect_server: str) -> Iterator[Runner]:
    """The deployments served by one subprocess for the session (stopped by PID at the end)."""
    served = Runner(prefect_server, _SESSION_HOME / "runner-data")
    try:
        served.wait_ready()
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's SES over real HTTP for the session (started only when a test asks for it)."""
    from tests.fakes.ses import start_moto  # moto is slow to import: only for the tests that use it

    url, server = start_moto()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    """A MongoDB-wire server (nx-27017) for the whole session, stopped by PID at the end."""
    from tests.mongo_server import NxServer

    server = NxServer()
    try:
        server.wait_ready()
        yield server.uri
    finally:
        server.stop()
