"""Dead upsells are found and run again: a run left Running or Pending by a process that died is rescheduled
and finished by the session's runner, without sending twice; a crashed run is retried a bounded number of
times with backoff, then ends Failed with the reason; a wait saved without its input schema is repaired."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed, Pending, Running, State

from flows.api import create_upsell_run
from flows.models import AutomationLevel, UsageAlert
from flows.recovery import upsell_recovery
from flows.upsell import upsell
from tasks.recover_runs import RECOVERY_KEY, recovery_attempts
from tasks.runtime.settings import UpsellSettings
from tasks.runtime.waits import deadline_key
from tests.support import read_run, resume, task_runs, wait_until_final, wait_until_paused

UNSERVED = "upsell/recovery-bounded"  # nobody serves it: its rescheduled runs stay Scheduled


def _alert() -> UsageAlert:
    return UsageAlert(event_id=f"evt-rec-{uuid.uuid4().hex[:10]}", account_id="12345", metric_type="trade_volume",
                      current_value=150, threshold=100, severity="critical")  # fmt: skip


def _create(deployment: str, alert: UsageAlert, state: State[Any]) -> UUID:
    """A run of `deployment` created directly in `state`: what a runner that died after taking it leaves."""

    async def go() -> UUID:
        async with get_client() as client:
            found = await client.read_deployment_by_name(deployment)
            run = await client.create_flow_run_from_deployment(
                found.id, parameters={"alert": alert.model_dump(mode="json"), "automation_level": "FULL_AUTOMATION"},
                state=state, idempotency_key=f"upsell:{alert.event_id}",
            )  # fmt: skip
            return run.id

    return asyncio.run(go())


def _email_sends(run_id: UUID) -> int:
    """How many times the run's email step ran (over all its segments)."""
    return sum(1 for t in task_runs(run_id) if t.name.startswith("send_email_draft"))


@pytest.mark.parametrize("left", [Running, Pending], ids=["running-without-heartbeat", "stuck-pending"])
def test_a_run_whose_process_died_is_run_again_and_finishes_once(runner: Any, left: Any) -> None:
    alert = _alert()
    run_id = _create("upsell/upsell", alert, left())
    time.sleep(1.2)  # older than stale_after_s, and no heartbeat ever came

    done = upsell_recovery(stale_after_s=1.0, max_attempts=3, backoff_s=0, flow_run_ids=[run_id])

    assert done == {str(run_id): "rescheduled"}
    [attempt] = recovery_attempts_of(run_id)
    assert attempt["problem"] == ("no heartbeat" if left is Running else "stuck pending")
    wait_until_paused(run_id, "reply", timeout_s=90)  # the session's runner took it and ran it to the reply wait
    resume(run_id, "reply", {"reply": "no"})
    final = wait_until_final(run_id, timeout_s=60)
    assert final.state is not None and final.state.is_completed()
    assert _email_sends(run_id) == 1  # its email was sent once over both runs of it
    assert upsell_recovery(stale_after_s=1.0, flow_run_ids=[run_id]) == {}  # a finished run is left alone


def recovery_attempts_of(run_id: UUID) -> list[dict[str, Any]]:
    with get_client(sync_client=True) as client:
        return recovery_attempts(client, run_id)


def test_a_crashed_run_is_retried_with_backoff_then_fails_with_the_reason(prefect_server: str) -> None:
    upsell.to_deployment(name="recovery-bounded").apply()
    run_id = _create(UNSERVED, _alert(), Crashed(message="the serving process was killed"))
    outcomes, delays = [], []
    for _ in range(3):
        started = read_run(run_id).state
        outcomes.append(upsell_recovery(max_attempts=2, backoff_s=10, flow_run_ids=[run_id])[str(run_id)])
        state = read_run(run_id).state
        assert state is not None and started is not None
        if state.type is StateType.SCHEDULED:
            assert state.state_details.scheduled_time is not None
            delays.append((state.state_details.scheduled_time - state.timestamp).total_seconds())
            assert state.message and state.message.startswith(f"Recovery {len(delays)}/2")
            with get_client(sync_client=True) as client:  # the rerun dies again
                client.set_flow_run_state(run_id, Crashed(message="the serving process was killed"), force=True)

    assert outcomes == ["rescheduled", "rescheduled", "failed"]
    assert [round(d) for d in delays] == [10, 20]  # backoff doubles
    final = read_run(run_id).state
    assert final is not None and final.type is StateType.FAILED
    assert final.message == (
        "Upsell gave up after 2 recoveries; last problem: crashed: the serving process was killed"
    )
    with get_client(sync_client=True) as client:
        assert json.loads(client.read_flow_run_input(run_id, f"{RECOVERY_KEY}-2"))["problem"] == "crashed"

    from typer.testing import CliRunner

    from deployments.cli import app

    listed = CliRunner().invoke(app, ["runs", "--json", "--limit", "500"])
    assert listed.exit_code == 0, listed.output
    health = {row["flow_run_id"]: row["health"] for row in json.loads(listed.output)}
    assert health[str(run_id)] == f"failed: {final.message}"  # the operator sees the run that was given up on


def test_a_wait_saved_without_its_schema_is_repaired_and_can_be_answered(runner: Any) -> None:
    alert = _alert()

    async def trigger() -> UUID:
        async with get_client() as client:
            return (await create_upsell_run(client, alert, AutomationLevel.FULL_AUTOMATION)).id

    run_id = asyncio.run(trigger())
    run = wait_until_paused(run_id, "reply", timeout_s=90)
    assert run.state is not None and run.state.state_details.run_input_keyset is not None
    keyset = run.state.state_details.run_input_keyset
    with get_client(sync_client=True) as client:  # what a kill between the Suspended state and the schema leaves
        client.delete_flow_run_input(run_id, keyset["schema"])
    with pytest.raises(Exception, match="schema"):
        resume(run_id, "reply", {"reply": "yes"})

    assert upsell_recovery(flow_run_ids=[run_id]) == {str(run_id): "schema saved again"}

    resume(run_id, "reply", {"reply": "no"})
    final = wait_until_final(run_id, timeout_s=60)
    assert final.state is not None and final.state.is_completed()
    assert timedelta(0) <= final.state.timestamp - run.state.timestamp


def test_serving_creates_the_zombie_automation_once(runner: Any) -> None:
    from prefect.automations import Automation
    from prefect.events.actions import RunDeployment

    from deployments.automations import (
        RECOVERY_DEPLOYMENT,
        ZOMBIE_AFTER_S,
        ZOMBIE_AUTOMATION,
        ensure_zombie_automation,
    )

    first, second = asyncio.run(ensure_zombie_automation()), asyncio.run(ensure_zombie_automation())
    assert (first, second) == (True, False)
    saved = Automation.read(name=ZOMBIE_AUTOMATION)
    assert isinstance(saved, Automation)
    trigger = saved.trigger.model_dump()
    assert trigger["posture"] == "Proactive" and trigger["within"] == timedelta(seconds=ZOMBIE_AFTER_S)
    # any event of the run (a wait, a final state named for its outcome, a heartbeat) is not a death
    assert trigger["expect"] == {"prefect.flow-run.*"}
    # the silence is timed from the hand-over to a runner or worker, the start and each heartbeat: a process
    # killed before it started the run, or before its first beat, is as dead as one that stopped beating
    assert trigger["after"] == {"prefect.flow-run.Submitting", "prefect.flow-run.Pending", "prefect.flow-run.Running",
                                "prefect.flow-run.heartbeat"}  # fmt: skip
    # it never changes a run's state itself (issue 30: it crashed Suspended runs): it runs the sweep for the run,
    # which reads the run's state
    [action] = saved.actions
    with get_client(sync_client=True) as client:
        recovery_id = client.read_deployment_by_name(RECOVERY_DEPLOYMENT).id
    assert isinstance(action, RunDeployment) and action.deployment_id == recovery_id
    assert action.parameters == {"flow_run_ids": ["{{ flow_run.id | string }}"], "stale_after_s": ZOMBIE_AFTER_S}
    # an automation saved by an earlier version (it marked runs Crashed) is brought up to date
    from prefect.events.actions import ChangeFlowRunState

    saved.trigger.expect = {"prefect.flow-run.heartbeat", "prefect.flow-run.Completed"}  # type: ignore[union-attr]
    saved.actions = [ChangeFlowRunState(state=StateType.CRASHED)]
    asyncio.run(saved.aupdate())
    assert asyncio.run(ensure_zombie_automation()) is False
    updated = Automation.read(name=ZOMBIE_AUTOMATION)
    assert updated.trigger.model_dump()["expect"] == {"prefect.flow-run.*"}
    assert [type(a) for a in updated.actions] == [RunDeployment]
    asyncio.run(updated.adelete())  # other tests' runs are not watched by it


def test_upsell_runs_tells_a_dead_run_from_a_live_one_and_recover_takes_one_id(prefect_server: str) -> None:
    from typer.testing import CliRunner

    from deployments.cli import app

    upsell.to_deployment(name="recovery-bounded").apply()
    dead = _create(UNSERVED, _alert(), Crashed(message="killed"))
    queued = _create(UNSERVED, _alert(), Pending())  # Pending for less than the stale time: not dead yet

    listed = CliRunner().invoke(app, ["runs", "--json", "--limit", "500"])
    assert listed.exit_code == 0, listed.output
    health = {row["flow_run_id"]: row["health"] for row in json.loads(listed.output)}
    assert health[str(dead)] == f"dead: crashed (run `upsell recover {dead}`)"
    assert health[str(queued)] == "queued"

    refused = CliRunner().invoke(app, ["recover", "not-a-run-id"])
    assert refused.exit_code != 0 and "is not a flow run id" in refused.output
    recovered = CliRunner().invoke(app, ["recover", str(dead)])
    assert recovered.exit_code == 0 and f"{dead}  rescheduled" in recovered.output, recovered.output


def _paused_again(run_id: UUID, key: str, after: datetime, timeout_s: float = 90) -> Any:
    """The run once it waits for `key` in a state set after `after` (a new wait, not the one it was in)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = read_run(run_id)
        state = run.state
        if state and state.is_paused() and state.state_details.pause_key == key and state.timestamp > after:
            return run
        assert not (state and state.is_completed()), f"run ended {state.name} ({state.message}) instead of waiting"
        time.sleep(0.3)
    raise TimeoutError(f"run {run_id} did not wait for {key} again (state {run.state and run.state.name})")


def test_a_run_crashed_while_waiting_waits_again_until_answered(runner: Any) -> None:
    """Issue 30: a run crashed while suspended at its reply wait, then recovered, suspends again at the same wait
    with the same deadline (a used pause key is not an answer); the customer's yes then wins it."""
    alert = _alert()

    async def trigger() -> UUID:
        async with get_client() as client:
            run = await create_upsell_run(client, alert, AutomationLevel.FULL_AUTOMATION, reply_timeout_s=900)
            return run.id

    run_id = asyncio.run(trigger())
    first = wait_until_paused(run_id, "reply", timeout_s=90)
    with get_client(sync_client=True) as client:
        recorded = json.loads(client.read_flow_run_input(run_id, deadline_key("reply")))
        # what the zombie automation did to such runs ("No heartbeat or state change for 90 s")
        client.set_flow_run_state(run_id, Crashed(message="No heartbeat or state change for 90 s"), force=True)
    crashed_at = read_run(run_id).state.timestamp  # type: ignore[union-attr]

    assert upsell_recovery(backoff_s=0, flow_run_ids=[run_id]) == {str(run_id): "rescheduled"}
    again = _paused_again(run_id, "reply", after=crashed_at)

    with get_client(sync_client=True) as client:
        assert json.loads(client.read_flow_run_input(run_id, deadline_key("reply"))) == recorded  # same deadline
    deadline = datetime.fromisoformat(recorded["deadline"])
    for state in (first.state, again.state):  # Prefect's own timeout: that deadline plus the grace period, both times
        assert state.state_details.pause_timeout is not None
        off = state.state_details.pause_timeout - (deadline + timedelta(seconds=UpsellSettings().wait_grace_s))
        assert abs(off.total_seconds()) < 3, off
    assert again.state.state_details.run_input_keyset == first.state.state_details.run_input_keyset  # same key

    resume(run_id, "reply", {"reply": "yes"})  # the API the CLI and the receiver answer through
    final = wait_until_final(run_id, timeout_s=90)
    assert final.state is not None and final.state.is_completed() and final.state.name == "Won", final.state
    assert _email_sends(run_id) == 1  # the rerun did not send the email again


def test_a_run_recovered_after_its_deadline_waits_until_the_sweep_closes_it(runner: Any) -> None:
    """A wait that expired while its run was down is not closed by the rerun itself: the run waits again (with only
    the grace period left) and the reply-timeouts sweep's answer ends it, No reply."""
    from flows.reply_timeouts import reply_timeouts

    alert = _alert()

    async def trigger() -> UUID:
        async with get_client() as client:
            return (await create_upsell_run(client, alert, AutomationLevel.FULL_AUTOMATION, reply_timeout_s=2)).id

    run_id = asyncio.run(trigger())
    wait_until_paused(run_id, "reply", timeout_s=90)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, Crashed(message="the serving process was killed"), force=True)
        recorded = json.loads(client.read_flow_run_input(run_id, deadline_key("reply")))
    deadline = datetime.fromisoformat(recorded["deadline"])
    crashed_at = read_run(run_id).state.timestamp  # type: ignore[union-attr]
    time.sleep(max((deadline - datetime.now(deadline.tzinfo)).total_seconds(), 0) + 0.5)  # down past its deadline

    assert upsell_recovery(backoff_s=0, flow_run_ids=[run_id]) == {str(run_id): "rescheduled"}
    again = _paused_again(run_id, "reply", after=crashed_at)
    assert again.state.state_details.pause_timeout is not None
    left = again.state.state_details.pause_timeout - datetime.now(deadline.tzinfo)
    assert left <= timedelta(seconds=UpsellSettings().wait_grace_s + 1)  # the deadline kept, not a new timeout

    assert str(run_id) in reply_timeouts(limit=2000)
    final = wait_until_final(run_id, timeout_s=90)
    assert final.state is not None and final.state.is_completed() and final.state.name == "No reply", final.state
