"""The receiver's bounds on what a client may send or try: every POST body is capped before its route
authenticates it (413, and the receiver's memory does not grow with the attempt), failed report logins are
limited per client (429), /healthz tells strangers only whether the receiver is up, and HSTS is sent when the
public URL is https. The receiver runs for real: a uvicorn subprocess (its memory is read from /proc) or a
ReceiverThread."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.sns import TOPIC_ARN
from tests.test_webhook_support import REPORT_TOKEN, SECRET
from webhook.ports import free_port
from webhook.serve import ReceiverThread
from webhook.settings import ReceiverSettings

REPO = Path(__file__).resolve().parents[1]
FORGED = "eyJmIjoiMSJ9.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
BIG = 40 * 1024 * 1024

POST_ROUTES = ["/alerts", "/inbound/ses", f"/links/{FORGED}", f"/unsubscribe/{FORGED}"]


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def receiver_process(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """`python -m webhook` (uvicorn, as deployed) on a free port: (its URL, its pid)."""
    tmp = tmp_path_factory.mktemp("limits")
    port = free_port()
    env = os.environ | {
        "UPSELL_WEBHOOK_SECRETS": SECRET, "UPSELL_PORT": str(port), "UPSELL_DATA_DIR": str(tmp),
        "UPSELL_PREFECT_API_URL": prefect_server, "UPSELL_SNS_TOPIC_ARNS": TOPIC_ARN,
    }
    log = (tmp / "receiver.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "webhook"], cwd=REPO, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp / "receiver.log").read_text()
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(20)


def _chunks(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    block = b"x" * size
    for _ in range(total // size):
        yield block


def _post_big(url: str, path: str, *, declared: bool) -> httpx.Response | None:
    """POST BIG bytes (with Content-Length, or chunked); the answer, or None when the receiver closed the
    connection before the client could read one (the body was refused while it streamed)."""
    headers = {"content-type": "text/plain" if path == "/inbound/ses" else "application/json"}
    if path.startswith("/unsubscribe"):
        headers["content-type"] = "application/x-www-form-urlencoded"
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            if declared:
                return http.post(path, content=b"x" * BIG, headers=headers)
            return http.post(path, content=_chunks(BIG), headers=headers)
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        return None


@pytest.mark.parametrize("path", POST_ROUTES)
def test_big_bodies_are_refused_before_the_route_and_memory_stays_flat(receiver_process, path):
    url, pid = receiver_process
    _post_big(url, path, declared=False)  # warm up: the first request of a kind allocates what it needs
    before = _rss_kb(pid)
    for declared in (True, False, True, False):
        answer = _post_big(url, path, declared=declared)
        if declared or answer is not None:
            assert answer is not None and answer.status_code == 413, answer and answer.text
            assert answer.json()["error"] == "body_too_large"
    grown = _rss_kb(pid) - before
    print(f"{path}: RSS {before} kB before 4 x {BIG // 2**20} MB posts, grew {grown} kB")  # noqa: T201
    assert grown < 8 * 1024, f"the receiver grew by {grown} kB"
    assert httpx.get(f"{url}/healthz", timeout=5).json() == {"status": "up"}  # and it still answers


def test_a_form_just_over_the_limit_is_413_and_a_normal_one_is_read(receiver_process):
    url, _ = receiver_process
    with httpx.Client(base_url=url, timeout=30) as http:
        over = http.post(f"/unsubscribe/{FORGED}", content=b"List-Unsubscribe=One-Click&" + b"x" * 4096,
                         headers={"content-type": "application/x-www-form-urlencoded"})
        assert over.status_code == 413 and over.json()["error"] == "body_too_large"
        assert "Strict-Transport-Security" not in over.headers and over.headers["X-Frame-Options"] == "DENY"
        forged = http.post(f"/unsubscribe/{FORGED}", content=b"List-Unsubscribe=One-Click",
                           headers={"content-type": "application/x-www-form-urlencoded"})
        assert forged.status_code == 403  # the token is checked as before, with the body read


# ---- /healthz and report logins ----


def _settings(tmp: Path, api_url: str, **fields: object) -> ReceiverSettings:
    return ReceiverSettings(webhook_secrets=[SECRET], data_dir=tmp, receiver_db=tmp / "receiver.db",
                            prefect_api_url=api_url, **fields)  # type: ignore[arg-type]


@pytest.fixture
def guarded(prefect_server: str, tmp_path: Path) -> Iterator[httpx.Client]:
    settings = _settings(tmp_path, prefect_server, report_token=REPORT_TOKEN, report_user="ops",
                         report_password="a-long-report-password", report_login_failures=3,
                         report_login_window_s=60, public_base_url="https://upsell.example.com")
    with ReceiverThread(settings) as thread, httpx.Client(base_url=thread.url, timeout=30) as http:
        yield http


def test_healthz_says_only_up_without_credentials(guarded):
    public = guarded.get("/healthz")
    assert public.status_code == 200 and public.json() == {"status": "up"}
    detailed = guarded.get("/healthz", headers={"authorization": f"Bearer {REPORT_TOKEN}"}).json()
    assert detailed["status"] == "up" and detailed["spool_depth"] == 0 and detailed["signing"] == "required"
    assert detailed["prefect_api_url"].startswith("http")
    basic = base64.b64encode(b"ops:a-long-report-password").decode()
    assert "spool_depth" in guarded.get("/healthz", headers={"authorization": f"Basic {basic}"}).json()
    wrong = guarded.get("/healthz", headers={"authorization": "Bearer wrong-token-0123456789"})
    assert wrong.status_code == 401 and "prefect_api_url" not in wrong.text


def test_failed_report_logins_are_limited_per_client(guarded):
    ok = {"authorization": f"Bearer {REPORT_TOKEN}"}
    for _ in range(5):  # successes do not count
        assert guarded.get("/healthz", headers=ok).status_code == 200
    for _ in range(3):
        assert guarded.get("/report", headers={"authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    limited = guarded.get("/report", headers={"authorization": "Bearer another-wrong-0123456789"})
    assert limited.status_code == 429, limited.text
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    # while limited, even the right token is not tried (a guess that happens to be right tells nothing), and
    # /healthz's credentials are the same login
    assert guarded.get("/report", headers=ok).status_code == 429
    assert guarded.get("/healthz", headers=ok).status_code == 429
    assert guarded.get("/healthz").json() == {"status": "up"}  # the public answer needs no login


def test_hsts_when_the_public_url_is_https(guarded, prefect_server, tmp_path):
    for path in ("/healthz", "/no-such-page", f"/links/{FORGED}"):
        assert guarded.get(path).headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    plain = _settings(tmp_path / "plain", prefect_server, public_base_url="http://127.0.0.1:8000")
    with ReceiverThread(plain) as thread:
        assert "Strict-Transport-Security" not in httpx.get(f"{thread.url}/healthz").headers
