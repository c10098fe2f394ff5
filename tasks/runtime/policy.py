"""Retry policy shared by every step: exponential backoff with jitter, no retry of permanent failures."""

from __future__ import annotations

from typing import Any, Final, Literal, ParamSpec, TypeVar

import httpx
from prefect.tasks import Task, exponential_backoff
from pydantic import ValidationError

from blocks.interfaces import PermanentError
from tasks.runtime.settings import UpsellSettings, get_settings

P = ParamSpec("P")
R = TypeVar("R")

RETRIES = 3
JITTER = 0.5
#: The two kinds of step: reading (fetches, the Slack post, the log) and sending (the plan, the email, the meeting).
FETCH_STEP: Final = "fetch-step"
SEND_STEP: Final = "send-step"
StepKind = Literal["fetch-step", "send-step"]
#: The kind of every step, by task name (filled by `step_options`).
STEP_KINDS: dict[str, StepKind] = {}


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


def retry_unless_permanent(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry transient failures only."""
    try:
        state.result()
    except Exception as exc:  # the failure the task raised
        return not is_permanent(exc)
    return True


def step_options(name: str, kind: StepKind) -> dict[str, Any]:
    """Decorator options of the retrying, persisted step `name` (results survive a suspend/resume) of `kind`.

    The timeout and retry delays here are the settings' defaults; `configured` applies the settings of the
    running process when the flow calls the step, so nothing is read from the environment at import. (The kind
    is kept here, not as a task tag: a tagged task run takes a tag concurrency slot from the API each time.)
    """
    STEP_KINDS[name] = kind
    defaults = UpsellSettings.model_fields
    timeout = defaults["send_timeout_s" if kind == SEND_STEP else "fetch_timeout_s"].default
    return {
        "name": name,
        "retries": RETRIES,
        "retry_delay_seconds": exponential_backoff(backoff_factor=defaults["retry_base_delay_s"].default),
        "retry_jitter_factor": JITTER,
        "retry_condition_fn": retry_unless_permanent,
        "timeout_seconds": timeout,
        "persist_result": True,
    }


def configured(step: Task[P, R], settings: UpsellSettings | None = None) -> Task[P, R]:
    """`step` with the timeout of its kind and the retry delays of `settings` (read now when not given)."""
    settings = settings or get_settings()
    timeout = settings.send_timeout_s if STEP_KINDS.get(step.name) == SEND_STEP else settings.fetch_timeout_s
    return step.with_options(
        timeout_seconds=timeout,
        retry_delay_seconds=exponential_backoff(backoff_factor=settings.retry_base_delay_s)(RETRIES),
    )
