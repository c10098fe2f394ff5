"""No secret leaves its block or setting: after real upsell runs, everything Prefect keeps and every file the runs
wrote is scanned for each configured secret, raw and encoded (URL, base64 at every alignment).

Every secret the system holds is set to a known, distinctive value: the `SecretStr` fields of the blocks
(Anthropic API key, AWS access key id, secret key and session token, Slack bot token, Zoom client secret,
the MongoDB URI with a password, the HTTP sources' bearer token) and of the settings (link-signing secret,
webhook HMAC secret). One run goes the production way (a signed alert to the receiver, the deployment run by
the served runner, every integration real); one runs in-process with the email, Slack and Zoom stand-ins, so
their local files are written; three make integrations fail (Claude 401, Slack invalid_auth with Zoom
refusing the OAuth credentials, MongoDB refusing the login) so that error messages and tracebacks are scanned
too. nx-27017 has no authentication, so a small proxy in front of it accepts SASL PLAIN logins: the MongoDB
password really is sent and checked.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus
from uuid import UUID

import bson
import httpx
import pytest
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate, LogCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.events import emit_event
from prefect.events.filters import EventFilter, EventOccurredFilter
from prefect.settings import PREFECT_HOME, PREFECT_LOCAL_STORAGE_PATH, PREFECT_SERVER_DATABASE_CONNECTION_URL
from prefect.states import State
from pydantic import SecretStr
from pymongo import MongoClient

from blocks import (
    AnthropicCredentials,
    HttpCrmSource,
    HttpUsageSource,
    MongoOpportunityStore,
    SesEmailSender,
    SlackCredentials,
    ZoomCredentials,
)
from blocks.registry import SERVICES
from flows.api import trigger_upsell_workflow
from flows.models import AutomationLevel, UpsellOutcome, UsageAlert
from flows.upsell import upsell
from tasks.runtime.links import verify_token
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.server import serve_in_thread
from tests.fakes.slack_api import FakeSlack
from tests.fakes.usage_api import UsageApiState, create_app
from tests.fakes.zoom_api import FakeZoom
from tests.support import find_run_id, resume, saved_blocks, task_runs, wait_until_final, wait_until_paused
from tests.test_flow_real_integrations import verified_sender
from tests.test_webhook_support import post_alert
from webhook.serve import ReceiverThread
from webhook.settings import ReceiverSettings

logger = logging.getLogger(__name__)

REGION = "us-east-1"
MONGO_USER = "upsell-app"
_TAG = uuid.uuid4().hex[:12]
#: Every secret carries this marker: a fragment of any secret (a truncated one, say) is found as well.
MARKER = f"LEAK{_TAG}"
#: The secrets, by where they are configured. '+', '/', '@', ':' and '=' make their URL and base64 forms differ
#: from the raw value (the AWS access key id stays alphanumeric: it is part of SigV4's Credential= field).
SECRETS: dict[str, str] = {
    "anthropic.api_key": f"sk-ant-api03-{MARKER}-anthropic+/key",
    "ses.aws_access_key_id": f"AKIA{MARKER.upper()}",
    "ses.aws_secret_access_key": f"aws-{MARKER}-secret+/access=key",
    "ses.aws_session_token": f"aws-{MARKER}-session+/token=",
    "slack.bot_token": f"xoxb-{MARKER}-slack+/bot-token",
    "zoom.client_secret": f"zoom-{MARKER}-client+/secret=",
    "mongo.uri password": f"mongo-{MARKER}:p@ss/w+rd=",
    "usage/crm.token": f"usage-{MARKER}-bearer+/token",
    "settings.link_secret": f"link-{MARKER}-signing+/secret",
    "settings.webhook_secrets": f"whsec-{MARKER}-hmac+/secret",
}
ZOOM_ACCOUNT, ZOOM_CLIENT_ID = f"acc-{_TAG}", f"cid-{_TAG}"
#: Not a secret of the system: planted by the test where the scan must find it (see `plant_canary`).
CANARY = f"canary-{uuid.uuid4().hex[:12]}+/planted="


# ---- the scanner ----


@dataclass(frozen=True)
class Needle:
    """One searchable form of a secret."""

    secret: str
    encoding: str
    value: bytes


def _base64_forms(raw: bytes) -> Iterator[tuple[str, bytes]]:
    """The secret's base64 at each of the three byte alignments, trimmed to the characters that depend on the
    secret alone: found inside any longer encoded string (`Basic base64(client_id:secret)`, say)."""
    for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
        for shift in range(3):
            encoded = encode(b"\0" * shift + raw)
            start, end = (0, 2, 3)[shift], (shift + len(raw)) // 3 * 4
            yield f"{name}@{shift}", encoded[start:end]


def needles(secrets: dict[str, str], marker: str = MARKER) -> list[Needle]:
    """Raw, URL-encoded (quote and quote_plus, upper and lower hex) and base64 forms of each secret, and the marker."""
    found = [Needle("any secret (marker)", "raw", marker.encode())]
    for label, secret in secrets.items():
        forms = {"raw": secret, "url": quote(secret, safe=""), "url-plus": quote_plus(secret)}
        forms |= {f"{k}-lower": re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), v) for k, v in forms.items()}
        seen: set[str] = set()
        for encoding, form in forms.items():
            if form not in seen:
                seen.add(form)
                found.append(Needle(label, encoding, form.encode()))
        found.extend(Needle(label, encoding, form) for encoding, form in _base64_forms(secret.encode()))
    return found


@dataclass
class Scan:
    """What was scanned (kind, source, content) and how much of each kind."""

    documents: list[tuple[str, str, bytes]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, source: str, content: str | bytes, count: int = 1) -> None:
        self.documents.append((kind, source, content.encode() if isinstance(content, str) else content))
        self.counts[kind] = self.counts.get(kind, 0) + count

    def found(self, forms: list[Needle]) -> list[tuple[str, str]]:
        """(kind, `<secret> (<encoding>) in <source>: …context…`) for every form found anywhere."""
        hits = []
        for kind, source, content in self.documents:
            for needle in forms:
                at = content.find(needle.value)
                if at >= 0:
                    context = content[max(at - 80, 0) : at + len(needle.value) + 40].decode(errors="replace")
                    hits.append((kind, f"{needle.secret} ({needle.encoding}) in {source}: …{context}…"))
        return hits

    def leaks(self, forms: list[Needle]) -> list[str]:
        return [hit for _kind, hit in self.found(forms)]


def _json(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def scan_prefect(scan: Scan, run_ids: list[UUID], since: datetime) -> None:
    """What the Prefect API keeps about the runs: logs, artifacts, runs and task runs with every state, the
    runs' inputs and results, and every event since `since`."""
    with get_client(sync_client=True) as client:
        for run_id in run_ids:
            offset = 0
            while True:  # logs of the flow run and of its task runs, a page at a time
                page = client.read_logs(
                    LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200, offset=offset
                )
                for log in page:
                    scan.add("log lines", f"log {run_id} {log.name}", f"{log.name} {log.message}")
                offset += len(page)
                if len(page) < 200:
                    break
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )
            for artifact in artifacts:
                scan.add("artifacts", f"artifact {artifact.key} of {run_id}", artifact.model_dump_json())
            run = client.read_flow_run(run_id)
            scan.add("flow runs", f"flow run {run_id}", run.model_dump_json())
            scan.counts["flow run parameters"] = scan.counts.get("flow run parameters", 0) + len(run.parameters)
            for state in client.read_flow_run_states(run_id):
                scan.add("states", f"flow run {run_id} state {state.name}", _state_text(state))
            for item in client.filter_flow_run_input(run_id, key_prefix="", limit=200, exclude_keys=set()):
                scan.add("flow run inputs", f"flow run input {item.key} of {run_id}", item.model_dump_json())
            scan.add("results", f"result of {run_id}", _result_text(run))
            for task_run in task_runs(run_id):
                scan.add("task runs", f"task run {task_run.name}", task_run.model_dump_json())
                scan.counts["task run inputs"] = scan.counts.get("task run inputs", 0) + len(task_run.task_inputs)
                for state in client.read_task_run_states(task_run.id):
                    scan.add("states", f"task run {task_run.name} state {state.name}", _state_text(state))
        events = client.read_events(filter=EventFilter(occurred=EventOccurredFilter(since=since)), limit=50)
        while True:  # every event since the test began (the runs', the receiver's, block loads), 50 a page
            for event in events.events:
                scan.add("events", f"event {event.event} {event.resource.id}", event.model_dump_json())
            if not events.next_page:
                break
            events = client.read_events_page(str(events.next_page))


def _state_text(state: State) -> str:
    return f"{state.name} {state.message or ''} {state.model_dump_json()}"


def _result_text(run: FlowRun) -> str:
    """The run's outcome, or the exception it failed with, as Prefect hands it back."""
    assert run.state is not None
    try:
        return repr(run.state.result(raise_on_failure=False))
    except Exception as exc:  # a result that cannot be read back is scanned as the error that says so
        return f"unreadable result: {exc!r}"


def scan_files(scan: Scan, kind: str, paths: Iterable[Path], since: float = 0.0) -> None:
    """Each file as it is on disk; an email also part by part, decoded (MIME bodies are base64 or QP)."""
    for path in paths:
        if not path.is_file() or path.stat().st_mtime < since:
            continue
        content = path.read_bytes()
        scan.add(kind, str(path), content)
        if path.suffix == ".eml":
            message = BytesParser(policy=policy.default).parsebytes(content)
            for part in message.walk():
                if not part.is_multipart():
                    scan.add("email parts (decoded)", f"{path} part {part.get_content_type()}", str(part.get_content()))
            scan.add("email parts (decoded)", f"{path} headers", _json(list(message.items())))


def scan_prefect_database(scan: Scan) -> None:
    """The Prefect server's SQLite files byte for byte (deleted rows and the WAL included): whatever a table not
    read through the API holds. Block documents are stored encrypted, so their secrets are not found here."""
    url = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value())
    database = Path(url.split(":///", 1)[1])
    scan_files(scan, "Prefect database files", [database, Path(f"{database}-wal"), Path(f"{database}-shm")])


def scan_mongo(scan: Scan, uri: str, database: str) -> None:
    """What the runs wrote to MongoDB: opportunities, send-once records (with failures' reprs), suppressions."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    with client:
        db = client[database]
        for name in db.list_collection_names():
            for document in db[name].find():
                scan.add("MongoDB documents", f"mongo {database}.{name}", _json(document))


# ---- a MongoDB login nx-27017 cannot do ----


class PlainAuthMongoProxy:
    """A MongoDB-wire proxy in front of nx-27017 that answers SASL PLAIN logins itself and forwards the rest.

    It checks the user and password the client sent (`logins` records them); `refuse = True` answers every
    login with MongoDB's AuthenticationFailed.
    """

    def __init__(self, upstream: str, username: str, password: str) -> None:
        host, port = upstream.removeprefix("mongodb://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.expected = (username, password)
        self.logins: list[tuple[str, str]] = []
        self.refuse = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="mongo-auth-proxy", daemon=True).start()

    def uri(self, password: str) -> str:
        return f"mongodb://{quote_plus(self.expected[0])}:{quote_plus(password)}@127.0.0.1:{self.port}/?authMechanism=PLAIN"

    def stop(self) -> None:
        self._listener.close()
        for sock in list(self._sockets):
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client: socket.socket = self._listener.accept()[0]
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        self._sockets += [client, upstream]
        lock = threading.Lock()  # both directions write to the client: whole messages only
        threading.Thread(target=self._relay, args=(upstream, client, lock), daemon=True).start()
        try:
            while (message := _read_message(client)) is not None:
                answer = self._login_answer(message)
                if answer is None:
                    upstream.sendall(message)
                else:
                    with lock:
                        client.sendall(answer)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    @staticmethod
    def _relay(source: socket.socket, target: socket.socket, lock: threading.Lock) -> None:
        try:
            while (message := _read_message(source)) is not None:
                with lock:
                    target.sendall(message)
        except OSError:
            pass
        finally:
            target.close()

    def _login_answer(self, message: bytes) -> bytes | None:
        request_id, op_code = struct.unpack_from("<i", message, 4)[0], struct.unpack_from("<i", message, 12)[0]
        if op_code != 2013 or message[20] != 0:  # OP_MSG with its body section first
            return None
        size = struct.unpack_from("<i", message, 21)[0]
        command = bson.decode(message[21 : 21 + size])
        if next(iter(command)) != "saslStart":
            return None
        _, username, password = bytes(command["payload"]).decode().split("\0")
        self.logins.append((username, password))
        if self.refuse or (username, password) != self.expected:
            reply: dict[str, Any] = {
                "ok": 0.0,
                "errmsg": "Authentication failed.",
                "code": 18,
                "codeName": "AuthenticationFailed",
            }
        else:
            reply = {"conversationId": 1, "done": True, "payload": bson.Binary(b""), "ok": 1.0}
        body = b"\0\0\0\0" + b"\0" + bson.encode(reply)
        return struct.pack("<iiii", 16 + len(body), uuid.uuid4().int & 0x7FFFFFFF, request_id, 2013) + body


def _read_message(sock: socket.socket) -> bytes | None:
    header = _read_exactly(sock, 4)
    if header is None:
        return None
    rest = _read_exactly(sock, struct.unpack("<i", header)[0] - 4)
    return None if rest is None else header + rest


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


# ---- the system, wired with the known secrets ----


@dataclass
class Wired:
    """The fakes and servers of this module, each holding (or checking) a known secret."""

    anthropic: FakeAnthropic
    slack: FakeSlack
    zoom: FakeZoom
    usage: UsageApiState
    usage_url: str
    mongo: PlainAuthMongoProxy
    mongo_direct: str
    moto_url: str
    sender: str


@pytest.fixture(scope="module")
def wired(moto_url: str, mongo_uri: str) -> Iterator[Wired]:
    anthropic_api = FakeAnthropic()
    anthropic_api.api_key = SECRETS["anthropic.api_key"]
    anthropic_api.start()
    slack_api = FakeSlack(token=SECRETS["slack.bot_token"]).start()
    zoom_api = FakeZoom(ZOOM_ACCOUNT, ZOOM_CLIENT_ID, SECRETS["zoom.client_secret"]).start()
    usage = UsageApiState(token=SECRETS["usage/crm.token"])
    usage_url, stop_usage = serve_in_thread(create_app(usage))
    proxy = PlainAuthMongoProxy(mongo_uri, MONGO_USER, SECRETS["mongo.uri password"])
    try:
        yield Wired(
            anthropic_api, slack_api, zoom_api, usage, usage_url, proxy, mongo_uri, moto_url, verified_sender(moto_url)
        )
    finally:
        proxy.stop()
        stop_usage()
        for fake in (anthropic_api, slack_api, zoom_api):
            fake.stop()


def documents(wired: Wired, database: str) -> dict[str, Block]:
    """Every integration block, each holding its known secret and pointed at the local servers."""
    return {
        "upsell-anthropic": AnthropicCredentials(
            api_key=SecretStr(SECRETS["anthropic.api_key"]), base_url=wired.anthropic.base_url, max_retries=0
        ),
        "upsell-ses": SesEmailSender(
            region_name=REGION,
            from_address=wired.sender,
            aws_access_key_id=SecretStr(SECRETS["ses.aws_access_key_id"]),
            aws_secret_access_key=SecretStr(SECRETS["ses.aws_secret_access_key"]),
            aws_session_token=SecretStr(SECRETS["ses.aws_session_token"]),
            endpoint_url=wired.moto_url,
        ),
        "upsell-slack": SlackCredentials(
            bot_token=SecretStr(SECRETS["slack.bot_token"]), channel="#sales-secret-scan", base_url=wired.slack.api_url
        ),
        "upsell-zoom": ZoomCredentials(
            account_id=ZOOM_ACCOUNT,
            client_id=ZOOM_CLIENT_ID,
            client_secret=SecretStr(SECRETS["zoom.client_secret"]),
            api_base_url=wired.zoom.api_base_url,
            oauth_base_url=wired.zoom.base_url,
        ),
        "upsell-mongo": MongoOpportunityStore(
            uri=SecretStr(wired.mongo.uri(SECRETS["mongo.uri password"])),
            database=database,
            server_selection_timeout_ms=3000,
        ),
        "upsell-usage": HttpUsageSource(
            base_url=wired.usage_url,
            token=SecretStr(SECRETS["usage/crm.token"]),
            field_mapping={"current": "value", "previous": "last_period", "threshold": "limit"},
        ),
        "upsell-crm": HttpCrmSource(
            base_url=wired.usage_url,
            token=SecretStr(SECRETS["usage/crm.token"]),
            field_mapping={"current_spend": "arr"},
        ),
    }


def _account(wired: Wired) -> tuple[str, str]:
    """A fresh account the usage/CRM fake knows; returns (account id, contact address)."""
    account_id = f"acct-{uuid.uuid4().hex[:8]}"
    recipient = f"buyer-{uuid.uuid4().hex[:10]}@customer.example.com"
    wired.usage.usage[(account_id, "trade_volume")] = {
        "value": 150,
        "last_period": 111,
        "limit": 100,
        "period": "monthly",
    }
    wired.usage.contracts[account_id] = {
        "company_name": "Acme Trading Ltd",
        "current_plan": "Growth",
        "contract_end_date": "2027-03-31",
        "renewal_date": "2027-03-01",
        "arr": 30000,
        "contact_info": {"name": "Dana Whitfield", "email": recipient, "title": "Head of Operations"},
    }
    return account_id, recipient


def _alert(wired: Wired, severity: str = "critical") -> UsageAlert:
    account_id, _ = _account(wired)
    return UsageAlert(
        event_id=f"evt-{uuid.uuid4().hex[:12]}",
        account_id=account_id,
        metric_type="trade_volume",
        current_value=150,
        threshold=100,
        severity=severity,
    )


def _start(pool: ThreadPoolExecutor, alert: UsageAlert, level: AutomationLevel) -> tuple[Future[Any], UUID]:
    """Call the flow in a thread (it pauses in place); returns its future state and its run id."""
    future = pool.submit(upsell, alert, automation_level=level, return_state=True)
    return future, find_run_id(alert.run_name)


async def _trigger(alert: UsageAlert) -> UUID:
    """Start a deployment run of the upsell for the alert (the served runner picks it up)."""
    async with get_client() as client:
        return await trigger_upsell_workflow(
            client,
            alert.account_id,
            alert.event_id,
            AutomationLevel.FULL_AUTOMATION,
            alert.metric_type,
            current_value=alert.current_value,
            threshold=alert.threshold,
            severity=alert.severity,
        )


def settle(run_ids: list[UUID], timeout_s: float = 30) -> None:
    """Wait until Prefect holds everything the runs sent: each run's final log line and final state event
    (logs and events are shipped and stored in batches)."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        for run_id in run_ids:
            final = wait_until_final(run_id)
            assert final.state is not None
            while True:
                logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200)
                events = client.read_events(
                    filter=EventFilter.model_validate(
                        {
                            "resource": {"id": [f"prefect.flow-run.{run_id}"]},
                            "event": {"name": [f"prefect.flow-run.{final.state.name}"]},
                        }
                    ),
                    limit=1,
                )
                logged = any(
                    log.task_run_id is None and log.message.startswith(f"Finished in state {final.state.name}")
                    for log in logs
                )
                if logged and events.events:
                    break
                assert time.monotonic() < deadline, f"logs/events of {run_id} not stored in {timeout_s}s"
                time.sleep(0.3)
    time.sleep(1.0)  # the other events of the runs are in the same or an earlier batch of the event persister


def scan_everything(
    run_ids: list[UUID], since: datetime, wired: Wired, database: str, files: list[Path], process_output: str
) -> Scan:
    """Once Prefect holds all the runs sent: the API, the server's database files, PREFECT_HOME, the given files,
    the runs' MongoDB database and this process's log output."""
    started = time.monotonic()
    settle(run_ids)
    settled = time.monotonic()
    scan = Scan()
    scan_prefect(scan, run_ids, since)
    read = time.monotonic()
    scan_prefect_database(scan)
    # PREFECT_HOME (shared with the runner): persisted results of flow and task runs, and anything else written
    kept = {Path(str(PREFECT_HOME.value())).expanduser(), Path(str(PREFECT_LOCAL_STORAGE_PATH.value())).expanduser()}
    scan_files(scan, "Prefect home files", {p for d in kept for p in d.rglob("*")}, since=since.timestamp() - 1)
    scan_files(scan, "local files", files)
    scan_mongo(scan, wired.mongo_direct, database)
    scan.add("process log output", "this test process's log records (direct runs, receiver)", process_output)
    logger.info(
        "scanned %s (settle %.1fs, API %.1fs, the rest %.1fs)",
        _json(scan.counts),
        settled - started,
        read - settled,
        time.monotonic() - read,
    )
    return scan


def plant_canary(run_id: UUID, directory: Path) -> None:
    """Put a secret-like value where the scan must find it, so that a clean scan means something: a log line of
    the run (base64, inside a Basic auth header), an artifact of the run, an event and a local file (URL-encoded)."""
    basic = base64.b64encode(f"user:{CANARY}".encode()).decode()
    with get_client(sync_client=True) as client:
        client.create_logs(
            [
                LogCreate(
                    name="secret-scan",
                    level=logging.INFO,
                    message=f"Authorization: Basic {basic}",
                    timestamp=datetime.now(UTC),
                    flow_run_id=run_id,
                )
            ]
        )
        client.create_artifact(
            ArtifactCreate(key="secret-scan-canary", type="markdown", data=f"token {CANARY}", flow_run_id=run_id)
        )
        emit_event(
            event="secret-scan.canary",
            resource={"prefect.resource.id": f"secret-scan.{run_id}"},
            payload={"token": CANARY},
        )
        deadline = time.monotonic() + 20
        while not client.read_events(
            filter=EventFilter.model_validate(
                {"event": {"name": ["secret-scan.canary"]}, "resource": {"id": [f"secret-scan.{run_id}"]}}
            ),
            limit=1,
        ).events:
            assert time.monotonic() < deadline, "the canary event was not stored"
            time.sleep(0.3)
    (directory / "canary.txt").write_text(quote(CANARY, safe=""))


def assert_no_leaks(scan: Scan) -> None:
    leaks = scan.leaks(needles(SECRETS))
    assert not leaks, "secrets found:\n" + "\n".join(leaks[:40])


def _in_data_dir(*dirs: Path) -> list[Path]:
    return [path for directory in dirs if directory.exists() for path in directory.rglob("*")]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))  # with the traceback, as a console shows it


@pytest.fixture
def process_log() -> Iterator[list[str]]:
    """Every log record this process emits during the test (the direct runs, the receiver), as its console
    handlers get them: on the root logger and on each logger that does not propagate there."""
    collect = _Collect()
    manager = logging.Logger.manager
    loggers = [logging.getLogger()] + [
        item
        for item in manager.loggerDict.values()
        if isinstance(item, logging.Logger) and not item.propagate and item.handlers
    ]
    for each in loggers:
        each.addHandler(collect)
    try:
        yield collect.lines
    finally:
        for each in loggers:
            each.removeHandler(collect)


# ---- the tests ----


def test_the_scanner_finds_every_form_of_a_secret() -> None:
    """Self-check: a secret embedded in a Basic auth header, a MongoDB URI, a URL query or a log is found."""
    secret = SECRETS["zoom.client_secret"]
    forms = needles({"zoom": secret}, marker="not-in-any-document")
    embedded = {
        "basic auth": "Authorization: Basic " + base64.b64encode(f"{ZOOM_CLIENT_ID}:{secret}".encode()).decode(),
        "basic auth, other id": "Basic " + base64.b64encode(f"x{ZOOM_CLIENT_ID}y:{secret}".encode()).decode(),
        "urlsafe token": base64.urlsafe_b64encode(f"{{'k': '{secret}'}}".encode()).decode(),
        "mongodb uri": f"mongodb://user:{quote_plus(secret)}@host:27017/db",
        "query, lower hex": "https://x/?s=" + re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote(secret, safe="")),
        "raw": f"error: bad key {secret} given",
    }
    for what, text in embedded.items():
        scan = Scan()
        scan.add("probe", what, text)
        assert scan.leaks(forms), what
    clean = Scan()
    clean.add("probe", "masked", f"key={SecretStr(secret)!r} {secret[:4]}…")
    assert clean.leaks(forms) == []


def test_a_full_run_leaves_no_secret_anywhere(
    wired: Wired,
    runner: Any,
    prefect_server: str,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    process_log: list[str],
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=2)
    database = f"upsell_scan_{uuid.uuid4().hex[:10]}"
    # The direct runs in this process sign their links with it (the served runner keeps the session's settings).
    monkeypatch.setenv("UPSELL_LINK_SECRET", SECRETS["settings.link_secret"])
    receiver_settings = ReceiverSettings(
        webhook_secrets=[SecretStr(SECRETS["settings.webhook_secrets"])],
        link_secret=SecretStr(SECRETS["settings.link_secret"]),
        data_dir=tmp_path / "receiver",
        receiver_db=tmp_path / "receiver" / "receiver.db",
        prefect_api_url=prefect_server,
        prefect_timeout_s=30,
    )
    blocks = documents(wired, database)
    standing_in = ("upsell-ses", "upsell-slack", "upsell-zoom")
    core = {name: block for name, block in blocks.items() if name not in standing_in}
    assert set(blocks) == {spec.document for spec in SERVICES.values()}  # every integration holds its secret
    wired.usage.seen.clear()

    with saved_blocks(core):
        # 1. The production way: a signed alert to the receiver, the deployment run by the served runner.
        with saved_blocks({name: blocks[name] for name in standing_in}):
            with ReceiverThread(receiver_settings) as receiver, httpx.Client(base_url=receiver.url, timeout=60) as http:
                account_id, _ = _account(wired)
                answer = post_alert(
                    http,
                    {
                        "event_id": f"evt-{uuid.uuid4().hex[:12]}",
                        "account_id": account_id,
                        "metric_type": "trade_volume",
                        "current_value": 150,
                        "threshold": 100,
                        "severity": "critical",
                    },
                    secret=SECRETS["settings.webhook_secrets"],
                )
                assert answer.status_code == 202, answer.text
                served = UUID(answer.json()["flow_run_id"])
                wait_until_paused(served, "reply", timeout_s=90)
                resume(served, "reply", {"reply": "yes"})
                final = wait_until_final(served, timeout_s=60)
        assert final.state is not None and final.state.is_completed(), final.state
        outcome = UpsellOutcome.model_validate(final.state.result())
        assert (outcome.standins, outcome.planner, outcome.email_status) == ([], "claude", "sent")
        assert outcome.slack_posted and outcome.meeting is not None

        # 2. In this process with the email, Slack and Zoom stand-ins (their files), HYBRID (signed decision links).
        with ThreadPoolExecutor(max_workers=1) as pool:
            future, local = _start(pool, _alert(wired, severity="high"), AutomationLevel.HYBRID)
            wait_until_paused(local, "reply")
            resume(local, "reply", {"reply": "yes"})
            wait_until_paused(local, "review")
            resume(local, "review", {"approved": True, "estimated_value": 25000.0, "note": "ok"})
            state = future.result(timeout=60)
        assert state.is_completed(), state
        assert UpsellOutcome.model_validate(state.result()).standins == ["email", "slack", "zoom"]

    # The secrets were really in use: each service got its credentials, the links verify with the link secret.
    presented = {  # as x-api-key or as a bearer token, depending on the SDK version
        r.headers.get("x-api-key") or r.headers.get("authorization", "").removeprefix("Bearer ")
        for r in wired.anthropic.requests_to("/v1/messages")
    }
    assert presented == {SECRETS["anthropic.api_key"]}
    assert {r.headers["authorization"] for r in wired.slack.requests_to("/chat.postMessage")} == {
        f"Bearer {SECRETS['slack.bot_token']}"
    }
    zoom_basic = base64.b64encode(f"{ZOOM_CLIENT_ID}:{SECRETS['zoom.client_secret']}".encode()).decode()
    assert {r.headers["authorization"] for r in wired.zoom.requests_to("/oauth/token")} == {f"Basic {zoom_basic}"}
    assert {s.authorization for s in wired.usage.seen} == {f"Bearer {SECRETS['usage/crm.token']}"}
    assert (MONGO_USER, SECRETS["mongo.uri password"]) in wired.mongo.logins
    [eml] = (data_dir / "outbox").glob("*.eml")
    body = BytesParser(policy=policy.default).parsebytes(eml.read_bytes()).get_body(preferencelist=("plain",))
    link = re.search(r"/links/([A-Za-z0-9_-]+)", str(body and body.get_content()))
    assert link is not None and verify_token(link[1], SECRETS["settings.link_secret"])
    assert {p.name for p in data_dir.iterdir()} >= {"outbox", "slack.jsonl", "meetings.jsonl"}

    plant_canary(local, data_dir)
    output = "\n".join(process_log)
    assert str(local) in output and str(served) in runner.log_path.read_text()  # the runs logged where we look
    files = [runner.log_path, *_in_data_dir(data_dir, runner.data_dir, tmp_path / "receiver")]
    scan = scan_everything([served, local], since, wired, database, files, output)
    planted = {kind for kind, _ in scan.found(needles({"canary": CANARY}, marker=CANARY))}
    assert planted >= {"log lines", "artifacts", "events", "local files", "Prefect database files"}, planted
    assert scan.counts["log lines"] > 20 and scan.counts["artifacts"] >= 2 and scan.counts["events"] > 20
    assert scan.counts["task runs"] >= 10 and scan.counts["flow run parameters"] >= 2
    assert scan.counts["email parts (decoded)"] >= 2 and scan.counts["MongoDB documents"] >= 4
    assert_no_leaks(scan)


def test_failing_integrations_leave_no_secret_in_errors(
    wired: Wired, runner: Any, data_dir: Path, monkeypatch: pytest.MonkeyPatch, process_log: list[str]
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=2)
    database = f"upsell_scan_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("UPSELL_LINK_SECRET", SECRETS["settings.link_secret"])
    runs: list[UUID] = []
    with saved_blocks(documents(wired, database)), ThreadPoolExecutor(max_workers=1) as pool:
        # A deployment run in the served runner (its console log is scanned): Claude refuses the API key, the
        # planning step fails at once (no retry) and so does the run.
        wired.anthropic.fail_next(status=401, payload="invalid x-api-key")
        logged_before = runner.log_path.stat().st_size
        run_id = asyncio.run(_trigger(_alert(wired)))
        final = wait_until_final(run_id, timeout_s=90)
        assert final.state is not None and final.state.is_failed(), final.state
        assert "AuthenticationError" in (final.state.message or "")
        runs.append(run_id)

        # Slack says invalid_auth (non-critical: the run goes on) and Zoom refuses the OAuth client secret.
        wired.slack.fail_next(status=200, payload="invalid_auth")  # permanent: not retried
        wired.zoom.client_secret = "not-the-configured-secret"
        try:
            future, run_id = _start(pool, _alert(wired), AutomationLevel.FULL_AUTOMATION)
            wait_until_paused(run_id, "reply")
            resume(run_id, "reply", {"reply": "yes"})
            state = future.result(timeout=60)
        finally:
            wired.zoom.client_secret = SECRETS["zoom.client_secret"]
        assert state.is_failed() and "400 Bad Request" in (state.message or ""), state
        assert [t.state.message for t in task_runs(run_id) if t.name.startswith("post_slack_summary")]
        runs.append(run_id)

        # MongoDB refuses the login (retried as a transient failure, then the email step fails); the usage API
        # answers 500 once on the way (retried).
        wired.mongo.refuse = True
        wired.usage.fail_500 = 1
        try:
            future, run_id = _start(pool, _alert(wired), AutomationLevel.FULL_AUTOMATION)
            state = future.result(timeout=60)
        finally:
            wired.mongo.refuse = False
        assert state.is_failed() and "Authentication failed" in (state.message or ""), state
        runs.append(run_id)

    with runner.log_path.open("rb") as log:
        log.seek(logged_before)
        assert b"Traceback" in log.read()  # the runner's console log has the failure, as an operator sees it
    failed = [t for run in runs for t in task_runs(run) if t.state and t.state.is_failed()]
    assert len(failed) >= 3  # the planning step, Zoom's meeting, the email step
    scan = scan_everything(
        runs, since, wired, database, [runner.log_path, *_in_data_dir(data_dir)], "\n".join(process_log)
    )
    tracebacks = [c for kind, _source, c in scan.documents if kind == "log lines" and b"Traceback" in c]
    assert tracebacks, "the failures' tracebacks are in the run logs"
    assert_no_leaks(scan)
