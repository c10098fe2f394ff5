"""A fault hook for crash tests: kills this process at chosen points around each outward call.

Off unless `UPSELL_FAULTS` is set. Its value is a comma-separated list of points, each `step:when`:

- `step` is an outward step (`send_email_draft`, `post_slack_summary`, `create_zoom_meeting`) or `*`;
- `when` is `before` (the step's idempotency claim is taken, the call not yet made) or `after` (the call
  returned, its record not yet completed) or `*`;
- `random:SEED` picks one point per event, from every step and both moments, by a hash of the seed and the
  event id (the same event always dies at the same point; different events at different ones).

A kill is SIGKILL of the whole process, as an out-of-memory kill or a lost machine would do: no `finally`,
no state change, no flush. One line goes to stderr first, so a test log shows where the process died.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from typing import Literal

from tasks.runtime.settings import get_settings

FAULTS_ENV = "UPSELL_FAULTS"
OUTWARD_STEPS = ("send_email_draft", "post_slack_summary", "create_zoom_meeting")
MOMENTS = ("before", "after")
Moment = Literal["before", "after"]


def all_points() -> list[str]:
    """Every point the hook can kill at, `step:when`."""
    return [f"{step}:{when}" for step in OUTWARD_STEPS for when in MOMENTS]


def random_point(seed: str, event_id: str) -> str:
    """The point `random:<seed>` kills an event at: fixed per (seed, event), spread over every point."""
    points = all_points()
    digest = hashlib.sha256(f"{seed}:{event_id}".encode()).digest()
    return points[int.from_bytes(digest[:4], "big") % len(points)]


def kills_at(spec: str, step: str, when: Moment, event_id: str) -> bool:
    """Whether the hook configured as `spec` kills at `step:when` for `event_id`."""
    for point in filter(None, (part.strip() for part in spec.split(","))):
        name, _, moment = point.partition(":")
        if name == "random":
            if random_point(moment, event_id) == f"{step}:{when}":
                return True
        elif name in ("*", step) and moment in ("*", when):
            return True
    return False


def fault_point(step: str, when: Moment, event_id: str) -> None:
    """Kill this process here if `UPSELL_FAULTS` names this point (does nothing when it is unset)."""
    spec = get_settings().faults
    if spec and kills_at(spec, step, when, event_id):
        sys.stderr.write(f"{FAULTS_ENV}: killing process {os.getpid()} at {step}:{when} for event {event_id}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
