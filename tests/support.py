"""Helpers for tests that drive real flow runs: wait for a run to pause or finish."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.blocks.core import Block
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


def find_run_id(name: str, timeout_s: float = 30) -> UUID:
    """The id of the flow run called `name` (a direct flow call running in another thread)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
            if runs:
                return runs[0].id
            time.sleep(0.2)
    raise TimeoutError(f"no flow run named {name}")


def resume(run_id: UUID | str, kind: str, value: dict) -> None:
    """Answer the run's wait through the public API (typed input, validated)."""
    import asyncio

    from flows.api import resume_wait

    async def go() -> None:
        async with get_client() as client:
            await resume_wait(client, run_id, kind, value)

    asyncio.run(go())


def task_runs(run_id: UUID | str) -> list:
    """Every task run of a flow run, with its state."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(str(run_id))])), limit=200
        )


@contextmanager
def saved_blocks(documents: dict[str, Block]) -> Iterator[None]:
    """Save each block as its document; on exit delete every one saved, even when the test (or a save) failed.

    Block documents are global on the session's Prefect server and other tests expect the local stand-ins, so a
    leftover document fails here, naming it, after the others are deleted.
    """
    saved: list[tuple[type[Block], str]] = []
    try:
        for name, block in documents.items():
            block.save(name, overwrite=True)
            saved.append((type(block), name))
        yield
    finally:
        failures = []
        for cls, name in saved:
            try:
                cls.delete(name)
            except Exception as exc:  # delete the rest, then fail: a leftover document breaks other tests
                failures.append(f"{name}: {exc!r}")
        assert not failures, f"block documents not deleted: {failures}"


def run_answering_reply(alert: Any, reply: str = "no") -> Any:
    """A direct call of the upsell flow (in a thread) whose reply wait is answered `reply`: its UpsellOutcome."""
    from concurrent.futures import ThreadPoolExecutor

    from flows.upsell import upsell

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(upsell, alert)
        run_id = find_run_id(alert.run_name)
        wait_until_paused(run_id, "reply")
        resume(run_id, "reply", {"reply": reply})
        return future.result(timeout=60)


def outbox_email(outbox: Path, event_id: str, kind: str = "offer") -> Path:
    """The file the local outbox keeps the event's email of `kind` in: named by its keyed idempotency key, which
    the session's link secret (the same in every process of the suite) derives."""
    from tasks.runtime.settings import get_settings
    from tasks.send_email_draft import idempotency_key

    secret = get_settings().link_secret.get_secret_value()
    return outbox / f"{idempotency_key(event_id, kind, secret)}.eml"  # type: ignore[arg-type]


def outbox_emails(outbox: Path, event_id: str) -> list[Path]:
    """The event's emails the local outbox holds (the offer, then the follow-up, those that were sent)."""
    return [path for kind in ("offer", "follow-up") if (path := outbox_email(outbox, event_id, kind)).exists()]
