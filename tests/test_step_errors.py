"""A failed step persists its exception (`persist_result`): it must be plain data. An SDK error keeping its request
(and the API key or bearer token in its headers) leaves the step as an `IntegrationError` with the service, the
status and the API's message; retries still follow the status; our own exceptions leave unchanged."""

from __future__ import annotations

import ast
import base64
import binascii
import importlib
import json
import os
import pickle
import pkgutil
import uuid
from pathlib import Path

import anthropic
import httpx
import pytest
from prefect import task
from prefect.tasks import Task

import flows
import tasks
from blocks.interfaces import IntegrationError, PermanentError, SendOutcomeUnknown
from tasks.runtime.policy import FETCH_STEP, STEP_KINDS, configured, data_only, is_permanent, step_options

# the steps run on their own here, outside a flow run, whose logs have no run to go to
pytestmark = pytest.mark.filterwarnings("ignore:Logger 'prefect.task_runs' attempted to send logs:UserWarning")
API_KEY = f"sk-ant-test-{uuid.uuid4().hex}"
ATTEMPTS: dict[str, int] = {}


def _request() -> httpx.Request:
    return httpx.Request("POST", "https://api.example.com/v1/things", headers={"Authorization": f"Bearer {API_KEY}",
                                                                             "x-api-key": API_KEY})


def _anthropic_refusal() -> anthropic.AuthenticationError:
    body = {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
    response = httpx.Response(401, request=_request(), json=body)
    return anthropic.AuthenticationError("Error code: 401 - invalid x-api-key", response=response, body=body)


def _status_error(status: int) -> httpx.HTTPStatusError:
    request = _request()
    response = httpx.Response(status, request=request, json={"error": "try later" if status >= 500 else "no"})
    return httpx.HTTPStatusError(f"Server error '{status}'", request=request, response=response)


@task(**step_options("test_failing_vendor_step", FETCH_STEP))
def failing_vendor_step(key: str, failures: list[str]) -> str:
    """Fails with the vendor errors listed (one per attempt), then succeeds."""
    attempt = ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    if attempt <= len(failures):
        kind = failures[attempt - 1]
        if kind == "anthropic-401":
            raise _anthropic_refusal()
        if kind == "permanent":
            raise PermanentError("bad input")
        raise _status_error(int(kind))
    return f"done after {attempt} attempts"


def _stored_bytes() -> bytes:
    """Everything Prefect's local result storage holds, with the base64 results decoded."""
    found = b""
    for path in (Path(os.environ["PREFECT_HOME"]) / "storage").rglob("*"):
        if not path.is_file():
            continue
        raw = path.read_bytes()
        found += raw
        try:
            found += base64.b64decode(json.loads(raw)["result"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            pass
    return found


def test_a_failed_step_stores_no_request_nor_its_credentials() -> None:
    key = uuid.uuid4().hex
    state = configured(failing_vendor_step)(key, ["anthropic-401"], return_state=True)
    assert state.is_failed() and ATTEMPTS[key] == 1  # 401: permanent, not retried
    error = state.result(raise_on_failure=False)
    assert isinstance(error, IntegrationError) and error.status_code == 401 and error.service == "anthropic"
    assert "AuthenticationError" in str(error) and "invalid x-api-key" in str(error)
    assert error.__cause__ is None and error.__suppress_context__
    assert API_KEY.encode() not in pickle.dumps(error)
    assert "IntegrationError" in (state.message or "") and "401" in (state.message or "")
    stored = _stored_bytes()
    assert b"invalid x-api-key" in stored  # the failure was persisted, and found by this scan
    assert API_KEY.encode() not in stored and base64.b64encode(API_KEY.encode())[:20] not in stored


def test_transient_vendor_errors_are_still_retried() -> None:
    key = uuid.uuid4().hex
    state = configured(failing_vendor_step)(key, ["503", "429"], return_state=True)
    assert state.is_completed() and state.result() == "done after 3 attempts"
    key = uuid.uuid4().hex
    state = configured(failing_vendor_step)(key, ["404"], return_state=True)
    assert state.is_failed() and ATTEMPTS[key] == 1
    assert "404" in (state.message or "") and '"no"' in str(state.result(raise_on_failure=False))


def test_our_own_exceptions_leave_a_step_unchanged() -> None:
    key = uuid.uuid4().hex
    with pytest.raises(PermanentError, match="bad input"):
        configured(failing_vendor_step).fn(key, ["permanent"])
    for plain in (PermanentError("x"), SendOutcomeUnknown("y"), ValueError("z"), TimeoutError("t")):
        assert data_only(plain) is plain


@pytest.mark.parametrize(("status", "permanent"), [(400, True), (401, True), (408, False), (409, False),
                                                    (429, False), (500, False), (503, False)])
def test_reduced_errors_keep_the_retry_decision(status: int, permanent: bool) -> None:
    reduced = data_only(_status_error(status))
    assert isinstance(reduced, IntegrationError) and reduced.status_code == status
    assert is_permanent(reduced) is permanent
    assert pickle.loads(pickle.dumps(reduced)).status_code == status  # picklable as Prefect stores it
    connection = data_only(httpx.ConnectError("refused", request=_request()))
    assert isinstance(connection, IntegrationError) and connection.status_code is None
    assert not is_permanent(connection) and API_KEY.encode() not in pickle.dumps(connection)


def test_the_flows_call_every_step_through_configured() -> None:
    """`configured` is where a failure is reduced to data: a step called around it would persist its raw error."""
    flows_dir = Path(flows.__file__).parent
    steps: set[str] = set()
    for module in flows_dir.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tasks"):
                steps |= {alias.asname or alias.name for alias in node.names}
    around: list[str] = []
    for module in flows_dir.glob("*.py"):
        tree = ast.parse(module.read_text())
        wrapped = {
            id(arg)
            for call in ast.walk(tree)
            if isinstance(call, ast.Call)
            and (getattr(call.func, "id", None) == "configured" or getattr(call.func, "attr", None) == "task")
            for arg in call.args[:1]
        }
        around += [
            f"{module.name}:{node.lineno} {node.id}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Name) and node.id in steps and node.id in _step_objects(STEP_KINDS)
            and id(node) not in wrapped
        ]
    assert _step_objects(STEP_KINDS) & steps  # the check sees the flows' steps
    assert not around, f"steps used without configured(): {around}"


def _step_objects(kinds: dict[str, object]) -> set[str]:
    """The names the steps are defined under (their task name is the function's name, or set by step_options)."""
    names: set[str] = set()
    for info in pkgutil.iter_modules(tasks.__path__):
        module = importlib.import_module(f"tasks.{info.name}")
        names |= {name for name, value in vars(module).items() if isinstance(value, Task) and value.name in kinds}
    return names
