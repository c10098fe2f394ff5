"""Retry policy shared by every step: exponential backoff with jitter, no retry of permanent failures."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any, overload

import httpx
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff
from pydantic import ValidationError

from tasks.interfaces import PermanentError

RETRIES = 3
JITTER = 0.5


def _seconds(variable: str, default: float) -> float:
    # Read once, when the task decorators are built (Prefect fixes a task's retries and timeout then), so not
    # through `get_settings()`; the same names are documented on `UpsellSettings`. Tests shorten them.
    return float(os.environ.get(variable) or default)


#: Timeout of one attempt of a step (the reference design gives each activity 5-10 minutes).
FETCH_TIMEOUT_S = _seconds("UPSELL_FETCH_TIMEOUT_S", 300.0)
SEND_TIMEOUT_S = _seconds("UPSELL_SEND_TIMEOUT_S", 600.0)
RETRY_DELAYS = exponential_backoff(backoff_factor=_seconds("UPSELL_RETRY_BASE_DELAY_S", 10.0))


def is_permanent(exc: BaseException) -> bool:
    """Validation errors and 4xx answers (other than 429) cannot be fixed by retrying."""
    if isinstance(exc, PermanentError | ValidationError | ValueError | TypeError | KeyError):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return 400 <= exc.response.status_code < 500 and exc.response.status_code != 429
    code = getattr(exc, "status_code", None)  # anthropic.APIStatusError and similar
    if isinstance(code, int):
        return 400 <= code < 500 and code not in (408, 409, 429)
    response = getattr(exc, "response", None)  # botocore ClientError carries a dict
    if isinstance(response, dict):
        http = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = response.get("Error", {}).get("Code", "")
        if code in ("Throttling", "ThrottlingException", "TooManyRequestsException"):
            return False
        return isinstance(http, int) and 400 <= http < 500 and http != 429
    return False


def retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry transient failures only."""
    try:
        state.result()
    except Exception as exc:  # the failure the task raised
        return not is_permanent(exc)
    return True


#: The least a request made near the end of its step is given (it still fails fast, with the client's own error).
MIN_REQUEST_TIMEOUT_S = 0.1


def step_time_left() -> float | None:
    """Seconds left of the running step's timeout; None outside a step, or for a step without a timeout.

    Prefect ends a step at its timeout by a signal only in a process's main thread (`--processes`); in a worker
    thread (flow runs in threads, `deployments/inprocess.py`) the timeout takes effect only once the blocking
    call in progress returns. So every wait a step makes on the outside (a vendor request, a rate-limit slot)
    is bounded by this, taken when the wait starts: a vendor that never answers cannot hold the step, or its
    thread, past its deadline, and the timeout then ends the step as the call returns.
    """
    context = TaskRunContext.get()
    step_timeout = context.task.timeout_seconds if context is not None else None
    if context is None or not step_timeout:
        return None
    elapsed = (datetime.now(UTC) - context.start_time).total_seconds()  # this attempt's context, not the first's
    return max(step_timeout - elapsed, MIN_REQUEST_TIMEOUT_S)


@overload
def request_timeout(configured_s: float) -> float: ...
@overload
def request_timeout(configured_s: None) -> float | None: ...
def request_timeout(configured_s: float | None) -> float | None:
    """`configured_s` (a client's own timeout; None: none), but never past what is left of the running step."""
    left = step_time_left()
    if left is None:
        return configured_s
    return left if configured_s is None else min(configured_s, left)


def cap_request_timeout(request: httpx.Request) -> None:
    """httpx request hook: this request's timeouts (connect, read, write, pool) end with the step at the latest.

    A hook, not the client's timeout, because a step may wait (a rate-limit slot, an earlier request) between
    building its client and sending a request.
    """
    left = step_time_left()
    timeouts = request.extensions.get("timeout")
    if left is not None and isinstance(timeouts, dict):
        request.extensions["timeout"] = {k: left if v is None else min(v, left) for k, v in timeouts.items()}


def step_options(timeout_s: float) -> dict[str, Any]:
    """Decorator options of a retrying, cached, persisted step (results survive a suspend/resume)."""
    return {
        "retries": RETRIES,
        "retry_delay_seconds": RETRY_DELAYS,
        "retry_jitter_factor": JITTER,
        "retry_condition_fn": retry_unless_permanent,
        "timeout_seconds": timeout_s,
        "persist_result": True,
    }
