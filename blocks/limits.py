"""Vendor rate limits as Prefect global concurrency limits (slot decay = requests per second).

Each client takes one slot of its vendor's limit before every request, so a burst of upsells queues in Prefect
instead of earning 429s. A limit that does not exist is skipped (`strict=False`): rate limiting is opt-in,
created by `ensure_rate_limits` (`upsell blocks create` or an operator) and tuned in the Prefect UI.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar, overload

import httpx
from prefect.client.orchestration import SyncPrefectClient
from prefect.concurrency.sync import rate_limit
from prefect.context import TaskRunContext

logger = logging.getLogger(__name__)

T = TypeVar("T")

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


#: Longest a request waits for a rate-limit slot before its step fails (and is retried by the task).
SLOT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class VendorRate:
    """A published vendor limit: `burst` requests at once, refilled at `per_second`."""

    burst: int
    per_second: float
    source: str


VENDOR_RATES: dict[str, VendorRate] = {
    # Tier-1 Messages API: 50 requests/minute, enforced over short intervals, so no burst beyond one.
    "upsell-anthropic": VendorRate(1, 50 / 60, "Anthropic tier 1: 50 RPM"),
    # chat.postMessage: about 1 message per second per channel (short bursts tolerated, not relied on).
    "upsell-slack": VendorRate(1, 1.0, "Slack chat.postMessage: ~1 message/s per channel"),
    # Meeting create is a 'Medium' API: 10 requests/s on Pro accounts (plus 100 creates per user per day).
    "upsell-zoom": VendorRate(10, 10.0, "Zoom medium APIs: 10 requests/s (Pro)"),
    # A sandboxed SES account sends 1 email/s; raise it to the account's quota once out of the sandbox.
    "upsell-ses": VendorRate(1, 1.0, "SES sandbox: 1 email/s"),
}


class RateLimitSlotUnavailable(Exception):
    """No rate-limit slot within SLOT_TIMEOUT_S: nothing was sent, so the step may safely be retried.

    Deliberately not a TimeoutError: the idempotency guard treats TimeoutError as "the send may have happened".
    """


def acquire_rate_limit(name: str, timeout_s: float = SLOT_TIMEOUT_S) -> None:
    """Take one slot of the global rate limit `name` if it exists; wait for it when the vendor's rate is used up.

    Inside a step the wait ends, at the latest, when the step's timeout does (`request_timeout`): in a worker
    thread the timeout cannot interrupt it, and a slow Prefect API or a used-up rate would hold the step past it.
    """
    timeout_s = request_timeout(timeout_s)
    try:
        rate_limit(name, occupy=1, timeout_seconds=timeout_s, strict=False)
    except TimeoutError as exc:  # Prefect's slot-timeout error is a TimeoutError
        raise RateLimitSlotUnavailable(f"no {name} rate-limit slot within {timeout_s:g}s") from exc
    except Exception as exc:  # Prefect could not be asked for a slot (its ConcurrencySlotAcquisitionError)
        # Degrade on purpose: the Prefect API being unreachable must not stop the send; the clients still
        # honour the vendor's own 429/Retry-After answers.
        logger.warning("Rate limit %s not applied: %s", name, exc)


def ensure_rate_limits(client: SyncPrefectClient, rates: dict[str, VendorRate] | None = None) -> dict[str, VendorRate]:
    """Create or update one global concurrency limit per vendor, sized to its published rate."""
    rates = VENDOR_RATES if rates is None else rates
    for name, rate in rates.items():
        client.upsert_global_concurrency_limit_by_name(name, limit=rate.burst, slot_decay_per_second=rate.per_second)
    return rates


class VendorRateLimited(Exception):
    """The vendor kept answering 429 (or asked for a longer wait than we allow): retry the step later."""


@dataclass(frozen=True)
class RetryAfter:
    """What an attempt returns for a rate-limited answer (HTTP 429): wait `seconds`, then try again."""

    seconds: float
    cause: BaseException | None = None  # the attempt's error, chained to the final VendorRateLimited
    detail: str = ""  # for the log, e.g. which of the vendor's limits was hit


def retry_after_seconds(value: str | None, default: float = 1.0) -> float:
    """A Retry-After header in seconds: delta-seconds, or the time until an HTTP date (Zoom's daily limits
    answer with one); `default` when absent; infinite when unreadable (longer than any wait we allow)."""
    if value is None:
        return default
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        until = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return float("inf")
    if until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    return max((until - datetime.now(UTC)).total_seconds(), 0.0)


def retry_after(
    attempt_fn: Callable[[], T | RetryAfter],
    *,
    rate_limit: str,
    max_retries: int,
    max_wait_s: float,
    vendor: str,
    gave_up: type[VendorRateLimited] = VendorRateLimited,
) -> T:
    """`attempt_fn`'s answer, each try under a slot of the `rate_limit`; a `RetryAfter` answer is tried again
    after its wait, at most `max_retries` times and only for waits up to `max_wait_s`, else raises `gave_up`.

    The vendor's own 429s are honoured here, not by the SDK's retries: every try takes a rate-limit slot, and
    nothing else is retried (a resend after a timeout could act twice).
    """
    for attempt in range(max_retries + 1):
        acquire_rate_limit(rate_limit)
        outcome = attempt_fn()
        if not isinstance(outcome, RetryAfter):
            return outcome
        wait = outcome.seconds
        if attempt >= max_retries or wait > max_wait_s:
            raise gave_up(f"{vendor} rate limited (Retry-After {wait:g}s) after {attempt + 1} tries") from outcome.cause
        hit = f" ({outcome.detail})" if outcome.detail else ""
        logger.info("%s rate limited%s; retrying in %.1fs (Retry-After)", vendor, hit, wait)
        time.sleep(wait)
    raise AssertionError("unreachable")  # the loop returns or raises
