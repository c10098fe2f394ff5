"""Retry policy shared by every step: exponential backoff with jitter, no retry of permanent failures; and what a
failing step leaves behind: an exception of plain data only (no request, response or headers)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import date, time, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any, Final, Literal, ParamSpec, TypeVar
from uuid import UUID

import httpx
from prefect.tasks import Task, exponential_backoff
from pydantic import ValidationError

from blocks.interfaces import IntegrationError, PermanentError
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


#: What an exception may hold to leave a step as it is: data, never an object (request, response, SDK client).
_PLAIN_VALUES = (str, bytes, int, float, bool, type(None), Enum, date, time, timedelta, Decimal, UUID, PurePath)
#: Header names whose value is a credential: a dict that has one is no plain data either.
_CREDENTIAL_KEYS = frozenset({"authorization", "proxy-authorization", "x-api-key", "cookie", "set-cookie"})
#: The longest message kept of a reduced exception (an SDK's message may quote a whole answer).
MAX_ERROR_MESSAGE = 2000


def _plain(value: object, depth: int = 0) -> bool:
    if isinstance(value, _PLAIN_VALUES):
        return True
    if depth > 5:
        return False
    if isinstance(value, list | tuple | set | frozenset):
        return all(_plain(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(
            not (isinstance(key, str) and key.lower() in _CREDENTIAL_KEYS) and _plain(key, depth + 1)
            and _plain(item, depth + 1)
            for key, item in value.items()
        )
    return False


def holds_only_data(exc: BaseException) -> bool:
    """Whether `exc` (its arguments and attributes) is plain data: nothing that may carry a request, a response,
    a client or their headers (an SDK's error keeps those, and with them the API key or bearer token)."""
    return _plain(exc.args) and _plain(getattr(exc, "__dict__", {}))


def _status_code(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)  # anthropic.APIStatusError and similar
    if isinstance(code, int):
        return code
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)  # httpx.HTTPStatusError, slack_sdk's SlackApiError
    if isinstance(code, int):
        return code
    if isinstance(response, dict):  # botocore's ClientError
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code if isinstance(code, int) else None
    return None


def data_only(exc: Exception) -> Exception:
    """`exc` itself when it holds only data; otherwise an `IntegrationError` with its service (the SDK's package),
    its HTTP status and its message, which keeps the retry decision and what a person needs to read."""
    if holds_only_data(exc):
        return exc
    service = type(exc).__module__.split(".")[0]
    message = f"{type(exc).__name__}: {exc}"
    response = getattr(exc, "response", None)
    if isinstance(response, httpx.Response):  # httpx's message names the status only: add the API's own words
        try:
            message += f"; answer: {response.text[:500]}"
        except httpx.ResponseNotRead:  # a streamed answer: not read here
            pass
    message = message[:MAX_ERROR_MESSAGE]
    return IntegrationError(service, _status_code(exc), message)


def failing_with_data_only(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn`, whose exceptions leave it reduced by `data_only`.

    A step's result is persisted (`persist_result`), and so is the exception of a failed attempt, pickled with its
    attributes: an SDK error would take its request along, headers and credentials included. This is the one
    place every step's failure goes through (the flows call each step through `configured`), so it holds for
    every vendor, present and future, without each block translating its SDK's errors. The reduced exception is
    raised with the original traceback (the log still shows where it failed) and without the original chained.
    """
    if getattr(fn, "_upsell_data_only", False):
        return fn

    @functools.wraps(fn)
    def step(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            reduced = data_only(exc)
            if reduced is exc:
                raise
            raise reduced.with_traceback(exc.__traceback__) from None

    step._upsell_data_only = True  # type: ignore[attr-defined]
    return step


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
    """`step` with the timeout of its kind and the retry delays of `settings` (read now when not given), failing
    with exceptions of plain data only (`failing_with_data_only`)."""
    settings = settings or get_settings()
    timeout = settings.send_timeout_s if STEP_KINDS.get(step.name) == SEND_STEP else settings.fetch_timeout_s
    step = step.with_options(
        timeout_seconds=timeout,
        retry_delay_seconds=exponential_backoff(backoff_factor=settings.retry_base_delay_s)(RETRIES),
    )
    # set after the copy is made: the task's key and cache source stay the function's own (`functools.wraps`)
    step.fn = failing_with_data_only(step.fn)
    return step
