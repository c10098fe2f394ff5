"""Retry policy shared by every step: exponential backoff with jitter, no retry of permanent failures."""

from __future__ import annotations

import os
from typing import Any

import httpx
from prefect.tasks import exponential_backoff
from pydantic import ValidationError

from blocks.interfaces import PermanentError

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
