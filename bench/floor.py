"""The waiting benchmark's floor: what Prefect itself costs for an upsell-shaped run, with none of its steps.

`upsell-floor` takes the upsell flow's parameters, suspends for the customer's reply exactly as the upsell
does (`suspend_flow_run` with the typed `CustomerReplyInput`, key `reply`), and returns an `UpsellOutcome`.
It is served the way `deployments.serve` serves `upsell` (the in-process runner, same limits) and triggered
through the same receiver, so a burst of it measures the ingress, the Prefect server, the runner and the
suspend/resume round trip alone. `bench/waiting.py` runs it after the upsell burst, in the same run, and
reports the upsell's latencies as ratios against it.

`python bench/floor.py --help`
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project packages, from anywhere

from prefect import flow  # noqa: E402 - after the path
from prefect.flow_runs import suspend_flow_run  # noqa: E402

from flows.models import (  # noqa: E402
    AutomationLevel,
    CustomerReplyInput,
    UpsellOutcome,
    UpsellStatus,
    UsageAlert,
)

DEPLOYMENT = "upsell-floor/upsell-floor"
REPLY_TIMEOUT_S = 86_400


@flow(name="upsell-floor", persist_result=True, validate_parameters=True)
def upsell_floor(
    alert: UsageAlert,
    automation_level: AutomationLevel | None = None,
    reply_timeout_s: float | None = None,
    approval_timeout_s: float | None = None,
) -> UpsellOutcome:
    """Wait for the customer's reply, then end: an upsell without its steps."""
    answer = suspend_flow_run(wait_for_input=CustomerReplyInput, timeout=int(reply_timeout_s or REPLY_TIMEOUT_S),
                              key="reply")
    return UpsellOutcome(
        status=UpsellStatus.COMPLETED,
        event_id=alert.event_id,
        account_id=alert.account_id,
        automation_level=automation_level or AutomationLevel.FULL_AUTOMATION,
        email_sent=False,
        reply=answer.reply,
    )


def main(argv: list[str] | None = None) -> None:
    from deployments.inprocess import InProcessRunner
    from deployments.serve import DEFAULT_EXECUTING, DEFAULT_LIMIT

    parser = argparse.ArgumentParser(prog="bench/floor.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"Runs in flight (default {DEFAULT_LIMIT}).")
    parser.add_argument("--executing", type=int, default=DEFAULT_EXECUTING,
                        help=f"Flow bodies executing at once (default {DEFAULT_EXECUTING}).")
    args = parser.parse_args(argv)
    runner = InProcessRunner(pause_on_shutdown=True, limit=args.limit, executing=args.executing)
    runner.add_served(upsell_floor.to_deployment(name="upsell-floor", enforce_parameter_schema=True), upsell_floor)
    print(f"Serving {DEPLOYMENT} ({args.limit} in flight, {args.executing} executing)", flush=True)  # noqa: T201
    try:
        asyncio.run(runner.start())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
