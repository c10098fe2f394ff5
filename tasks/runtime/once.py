"""Outward steps happen at most once per (event, step), guarded by an idempotency record in the store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from blocks.interfaces import OpportunityStore, SendOutcomeUnknown
from tasks.runtime.faults import fault_point


@dataclass(frozen=True)
class Once:
    """What `run_once` did: ran the action now, found it already done, or found its outcome unknown."""

    status: Literal["done", "already", "unknown"]
    result: dict[str, Any] | None = None
    detail: str = ""


def run_once(store: OpportunityStore, event_id: str, step: str, action: Callable[[], dict[str, Any]]) -> Once:
    """Run `action` unless (event_id, step) already ran; never repeat a step whose outcome is unknown.

    A definite failure (an error answer from the provider) releases the claim so the task's retry may try
    again; a timeout after the request went out, or a claim left behind by a crashed attempt, is an unknown
    outcome: recorded for a human and not repeated.
    """
    claim = store.claim(event_id, step)
    if claim.status == "done":
        return Once("already", claim.result)
    if claim.status == "pending":
        detail = "an earlier attempt started this step and never recorded its outcome (crash?)"
        store.mark_unknown(event_id, step, detail)
        return Once("unknown", detail=detail)
    if claim.status == "unknown":
        return Once("unknown", detail="flagged earlier: outcome unknown, waiting for a human")
    fault_point(step, "before", event_id)  # crash tests: the claim is taken, the call not made
    try:
        result = action()
    except (SendOutcomeUnknown, TimeoutError) as exc:
        store.mark_unknown(event_id, step, repr(exc))
        return Once("unknown", detail=str(exc))
    except Exception as exc:
        store.release(event_id, step, repr(exc))
        raise
    except BaseException as exc:  # interrupted mid-call (the step's timeout, a cancellation): it may have gone out
        store.mark_unknown(event_id, step, f"interrupted during the call: {type(exc).__name__}")
        raise
    fault_point(step, "after", event_id)  # crash tests: the call returned, its record not completed
    store.complete(event_id, step, result)
    return Once("done", result)
