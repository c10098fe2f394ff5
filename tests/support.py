"""Helpers for tests that drive real flow runs: wait for a run to pause or finish."""

from __future__ import annotations

import time
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun


def read_run(run_id: UUID | str) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(str(run_id)))


def wait_until_paused(run_id: UUID | str, key: str, timeout_s: float = 60) -> FlowRun:
    """Block until the run waits with pause key `key` (fails fast if it ends instead)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = read_run(run_id)
        if run.state and run.state.is_paused() and run.state.state_details.pause_key == key:
            return run
        if run.state and run.state.is_final():
            raise AssertionError(f"run ended {run.state.name} ({run.state.message}) before waiting for {key}")
        time.sleep(0.3)
    raise TimeoutError(f"run {run_id} did not wait for {key} in {timeout_s}s (state {run.state and run.state.name})")


def wait_until_final(run_id: UUID | str, timeout_s: float = 60) -> FlowRun:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = read_run(run_id)
        if run.state and run.state.is_final():
            return run
        time.sleep(0.3)
    raise TimeoutError(f"run {run_id} not final in {timeout_s}s (state {run.state and run.state.name})")
