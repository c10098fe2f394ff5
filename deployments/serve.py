"""Serves the upsell deployments from this process (`python -m deployments.serve`, or `upsell serve`)."""

from __future__ import annotations

import argparse

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.reply_timeouts import reply_timeouts
from flows.upsell import upsell

SWEEP_INTERVAL_S = 300


def build_deployments(sweep_interval_s: int | None = SWEEP_INTERVAL_S) -> list[RunnerDeployment]:
    """The `upsell` deployment and the `reply-timeouts` sweep (every 5 minutes unless told otherwise)."""
    return [
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
    ]


def main(argv: list[str] | None = None) -> None:
    """Serve the deployments until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m deployments.serve", description=main.__doc__)
    parser.add_argument("--limit", type=int, default=None, help="Max concurrent flow runs (default: no limit).")
    parser.add_argument(
        "--sweep-interval",
        type=int,
        default=SWEEP_INTERVAL_S,
        help="Seconds between reply-timeout sweeps; 0 disables the schedule.",
    )
    args = parser.parse_args(argv)
    serve(*build_deployments(args.sweep_interval), limit=args.limit, print_starting_message=True)


if __name__ == "__main__":
    main()
