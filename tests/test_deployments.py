"""prefect.yaml: every entrypoint imports as a flow with the declared parameters, and `prefect deploy --all`
registers the deployments on a `upsell-pool` process work pool."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import yaml
from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists
from prefect.flows import load_flow_from_entrypoint

from deployments.serve import build_deployments
from tests.conftest import REPO

SPEC = yaml.safe_load((REPO / "prefect.yaml").read_text())


def test_every_entrypoint_is_a_flow_with_the_declared_parameters():
    names = set()
    for deployment in SPEC["deployments"]:
        flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
        assert isinstance(flow, Flow)
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(deployment.get("parameters", {})) <= accepted, deployment["name"]
        assert deployment["work_pool"]["name"] == "upsell-pool"
        assert flow.description, "Prefect shows the docstring"
        names.add(deployment["name"])
    assert names == {"upsell", "reply-timeouts", "upsell-recovery", "upsell-backfill", "upsell-report"}
    served = {d.name for d in build_deployments()}
    assert served == names  # `upsell serve` and prefect.yaml describe the same deployments


def test_schedules_are_declared():
    by_name = {d["name"]: d for d in SPEC["deployments"]}
    assert by_name["reply-timeouts"]["schedules"] == [{"interval": 900}]  # `upsell serve` runs both on work found
    assert by_name["upsell-recovery"]["schedules"] == [{"interval": 300}]
    assert by_name["upsell-backfill"]["schedules"][0]["cron"]
    assert by_name["upsell-report"]["schedules"] == [{"cron": "0 7 * * 1", "timezone": "UTC"}]  # Mondays 07:00 UTC
    assert by_name["upsell"]["enforce_parameter_schema"] is True


def test_prefect_deploy_all_registers_the_deployments(prefect_server, tmp_path):
    # The same file with the deployment names suffixed, so the deployments served by the session's runner
    # (same flow names) are not rebound to the work pool.
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for deployment in spec["deployments"]:
        deployment["name"] += "-deploytest"
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(spec))
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name="upsell-pool", type="process"))
        except ObjectAlreadyExists:
            pass
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PWD": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with get_client(sync_client=True) as client:
        for name in ("upsell/upsell", "reply-timeouts/reply-timeouts", "upsell-recovery/upsell-recovery",
                     "upsell-backfill/upsell-backfill"):
            deployment = client.read_deployment_by_name(f"{name}-deploytest")
            assert deployment.work_pool_name == "upsell-pool"
            assert deployment.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
        assert client.read_deployment_by_name("upsell/upsell-deploytest").enforce_parameter_schema


def test_served_runs_share_one_verified_ssl_context_per_ca_file():
    """The in-process runner's shim: Prefect API clients built after it share the verified SSL context."""
    from prefect.client.orchestration import get_client

    from deployments.inprocess import share_prefect_ssl_contexts

    share_prefect_ssl_contexts()
    first, second = get_client(sync_client=True), get_client(sync_client=True)
    first_ctx = first._client._transport._pool._ssl_context  # type: ignore[attr-defined]
    second_ctx = second._client._transport._pool._ssl_context  # type: ignore[attr-defined]
    assert first_ctx is second_ctx
    assert first_ctx.verify_mode.name == "CERT_REQUIRED"  # still verified: nothing was loosened


def test_stopping_a_flow_run_thread_raises_termination_signal_in_it():
    """How the in-process runner cancels an executing run: TerminationSignal inside that thread, nothing else."""
    import threading
    import time

    from prefect.exceptions import TerminationSignal

    from deployments.inprocess import FlowRunThread, ThreadTerminationScope

    run, caught = FlowRunThread(), []

    def work() -> None:
        run.thread_id = threading.get_ident()
        try:
            while True:
                time.sleep(0.01)
        except TerminationSignal as exc:
            caught.append(exc.signal)
        finally:
            run.done.set()

    worker = threading.Thread(target=work)
    worker.start()
    while run.thread_id is None:
        time.sleep(0.01)
    scope = ThreadTerminationScope(run)
    assert scope.is_alive(0)
    scope.graceful_kill(0)
    worker.join(timeout=5)
    assert not worker.is_alive() and caught == [15] and not scope.is_alive(0)
