"""Issue 30: the maintenance sweeps do not flood the run list. `upsell serve` serves them without schedules and
creates a sweep run only when a look at the API finds work: a crashed upsell gets one recovery run, which
recovers it; a look that finds nothing creates no run."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.states import Crashed

from deployments.automations import RECOVERY_DEPLOYMENT
from deployments.serve import WATCHED_SWEEPS, build_deployments
from deployments.sweeps import RECOVERY_CHECK_S, Sweep, expired_waits_work, run_if_work, sweeps
from flows.models import UsageAlert
from tests.support import resume, wait_until_final, wait_until_paused
from tests.test_recovery import _create


def _runs_of(deployment: str) -> list[UUID]:
    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id])))
    return [run.id for run in runs]


def test_the_sweeps_are_served_without_schedules_and_the_others_keep_theirs():
    served = {d.name: d.schedules for d in build_deployments(sweep_interval_s=300)}
    assert all(not served[name] for name in WATCHED_SWEEPS)  # run when there is work, never on the clock
    assert served["upsell-backfill"] and served["upsell-report"]
    watched = sweeps("upsell-recovery/x", "reply-timeouts/y", 300)
    assert [(s.deployment, s.every_s) for s in watched] == [("upsell-recovery/x", RECOVERY_CHECK_S),
                                                            ("reply-timeouts/y", 300)]  # fmt: skip


def test_a_look_that_finds_no_work_creates_no_sweep_run(runner):
    before = _runs_of("reply-timeouts/reply-timeouts")
    nothing_expired_yet = datetime(2000, 1, 1, tzinfo=UTC)  # no wait of any run was due then
    assert run_if_work(Sweep("reply-timeouts/reply-timeouts", 300, expired_waits_work), nothing_expired_yet) is None
    assert _runs_of("reply-timeouts/reply-timeouts") == before


def test_a_crashed_upsell_gets_one_recovery_run_which_runs_it_again(runner):
    alert = UsageAlert(event_id=f"evt-swp-{uuid.uuid4().hex[:10]}", account_id="12345", metric_type="trade_volume",
                       current_value=150, threshold=100, severity="critical")  # fmt: skip
    run_id = _create("upsell/upsell", alert, Crashed(message="the serving process was killed"))
    [recovery] = sweeps(RECOVERY_DEPLOYMENT, "reply-timeouts/reply-timeouts", 300)[:1]

    sweep_run = run_if_work(recovery)

    assert sweep_run is not None
    assert run_if_work(recovery) is None  # one sweep run at a time: the first is under way (or done its work)
    sweep = wait_until_final(sweep_run, timeout_s=90)
    assert sweep.state is not None and sweep.state.is_completed() and sweep.name.startswith("recovery-sweep-")
    assert str(run_id) in sweep.parameters["flow_run_ids"]  # the run it found, by id
    wait_until_paused(run_id, "reply", timeout_s=120)  # the session's runner ran the crashed upsell again
    resume(run_id, "reply", {"reply": "no"})
    final = wait_until_final(run_id, timeout_s=60)
    assert final.state is not None and final.state.name == "Declined" and "outcome:declined" in final.tags


def test_serving_drops_the_schedule_an_earlier_version_gave_a_sweep(prefect_server):
    from deployments.sweeps import drop_schedules
    from flows.recovery import upsell_recovery

    name = f"recovery-scheduled-{uuid.uuid4().hex[:6]}"
    upsell_recovery.to_deployment(name=name, interval=60).apply()  # what `upsell serve` used to register
    assert drop_schedules(f"upsell-recovery/{name}") == 1
    with get_client(sync_client=True) as client:
        assert client.read_deployment_by_name(f"upsell-recovery/{name}").schedules == []
