"""Serves the upsell deployments from this process (`python -m deployments.serve`, or `upsell serve`)."""

from __future__ import annotations

import argparse

from prefect import serve
from prefect.client.orchestration import get_client
from prefect.deployments.runner import RunnerDeployment

from flows.backfill import upsell_backfill
from flows.reply_timeouts import reply_timeouts
from flows.upsell import upsell
from tasks.ratelimits import ensure_rate_limits

SWEEP_INTERVAL_S = 300
BACKFILL_CRON = "15 2 * * *"  # daily, 02:15 UTC
#: Flow-run processes at once: waiting runs hold none, so this bounds CPU and memory of the steps that run.
DEFAULT_LIMIT = 8


def build_deployments(sweep_interval_s: int | None = SWEEP_INTERVAL_S) -> list[RunnerDeployment]:
    """`upsell`, the `reply-timeouts` sweep (every 5 minutes) and the daily `upsell-backfill`.

    `sweep_interval_s=0` serves them without schedules (tests and the demo trigger them explicitly).
    """
    deployments = [
        upsell.to_deployment(
            name="upsell",
            description="Turns a usage alert into an upsell. Triggered by the receiver, once per event id.",
            tags=["upsell"],
            enforce_parameter_schema=True,
        ),
        reply_timeouts.to_deployment(
            name="reply-timeouts",
            description="Resumes waits past their deadline with no_reply, so they end Completed.",
            interval=sweep_interval_s if sweep_interval_s else None,
            tags=["upsell"],
        ),
        upsell_backfill.to_deployment(
            name="upsell-backfill",
            description="Finds qualifying alerts in a time window that have no upsell yet and triggers them.",
            cron=BACKFILL_CRON if sweep_interval_s else None,
            tags=["upsell"],
            enforce_parameter_schema=True,
        ),
    ]
    return [d for d in deployments if isinstance(d, RunnerDeployment)]  # sync context: never a coroutine


def main(argv: list[str] | None = None) -> None:
    """Serve the deployments until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m deployments.serve", description=main.__doc__)
    parser.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT,
        help=f"Max flow-run processes at once (default {DEFAULT_LIMIT}; each is ~150 MiB; waiting runs hold none).",
    )
    parser.add_argument(
        "--sweep-interval",
        type=int,
        default=SWEEP_INTERVAL_S,
        help="Seconds between reply-timeout sweeps; 0 disables the schedule.",
    )
    parser.add_argument(
        "--no-rate-limits", action="store_true",
        help="Do not create the vendors' global concurrency limits (upsell-slack, upsell-anthropic, ...).",
    )
    args = parser.parse_args(argv)
    if not args.no_rate_limits:
        with get_client(sync_client=True) as client:
            for name, rate in ensure_rate_limits(client).items():
                print(f"Rate limit {name}: {rate.per_second:g}/s (burst {rate.burst})")  # noqa: T201
    serve(*build_deployments(args.sweep_interval), limit=args.limit, print_starting_message=True)


if __name__ == "__main__":
    main()
