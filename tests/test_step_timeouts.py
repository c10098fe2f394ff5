"""A step's timeout holds in every serving mode: against a vendor that accepts the request and never answers,
each attempt of the step ends at its timeout (or at the client's own request timeout when that is shorter), the
retries are bounded the same way, and the run goes on or ends; it is never left Running.

The modes are served side by side, each by its own `python -m deployments.serve` under deployment names of its
own: flow runs in threads (the default), `--processes` (Prefect's runner, a process per run), and the fallback to
Prefect's runner when the in-process runner cannot be imported (forced as `test_inprocess.py` does: the module
is made unimportable before `deployments.serve` imports it). Every scenario runs in every mode, all at once
(each upsell has an account of its own, and the fakes hang only for the accounts of its scenario).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType, TaskRun
from pydantic import SecretStr

from blocks import HttpCrmSource, HttpUsageSource, SlackCredentials
from flows.api import trigger_upsell_workflow
from flows.models import AutomationLevel, SlackResult
from tasks.runtime.policy import RETRIES
from tests.conftest import Runner
from tests.fakes.server import serve_in_thread
from tests.fakes.silent import SilentServer
from tests.fakes.usage_api import UsageApiState, create_app
from tests.support import read_run, saved_blocks, task_runs

logger = logging.getLogger(__name__)

#: UPSELL_FETCH_TIMEOUT_S of the serving processes: the timeout of one attempt of fetch_usage, fetch_contract and
#: post_slack_summary.
STEP_TIMEOUT_S = 3.0
#: How late past its timeout an attempt may end (the engine's API round trips on a loaded 2-CPU machine).
MARGIN_S = 1.5
#: The CRM client's own request timeout: shorter than the step's, so it is what ends each attempt.
CLIENT_TIMEOUT_S = 1.0
#: The usage and Slack clients' own request timeout: far longer than the step's.
LONG_CLIENT_TIMEOUT_S = 30
METRIC = "trade_volume"

FALLBACK = (
    "import sys; sys.modules['deployments.inprocess'] = None;"  # as on a Prefect release the runner refuses
    " from deployments.serve import main; main(sys.argv[1:])"
)
MODES: dict[str, dict[str, Any]] = {
    "threads": {},
    "processes": {"serve_args": ["--processes"]},
    "fallback": {"launcher": ["-c", FALLBACK]},
}
#: What never answers, per scenario: the usage API (fetch_usage), the CRM (fetch_contract) or Slack; and the modes
#: each runs in. The fallback serves with the very runner `--processes` does (the guard only switches to it), so
#: there the step timeout itself is checked; the rest would repeat `--processes` at ~5 s of CPU per flow-run process.
SCENARIOS = {
    "hung-usage": ("threads", "processes", "fallback"),
    "hung-crm": ("threads", "processes"),
    "hung-slack": ("threads", "processes"),
}


@dataclass(frozen=True)
class Upsell:
    """One upsell of one scenario in one serving mode, for an account of its own."""

    scenario: str
    mode: str
    account_id: str
    run_id: UUID


@dataclass(frozen=True)
class Attempts:
    """How one step ran: each attempt's duration, first start to final state, the final state and result."""

    durations: list[float]
    total: float
    state: str
    message: str
    result: Any = None

    def describe(self) -> str:
        return (
            f"{self.state} after {len(self.durations)} attempts of"
            f" {', '.join(f'{d:.2f}' for d in self.durations)} s ({self.total:.2f} s in all): {self.message}"
        )


@dataclass
class Served:
    """Every upsell started here, each run as it settled (final, or waiting), and the fakes it talked to."""

    upsells: list[Upsell]
    runs: dict[UUID, FlowRun]
    usage_api: UsageApiState
    slack: SilentServer

    def of(self, scenario: str) -> list[Upsell]:
        return [u for u in self.upsells if u.scenario == scenario]


@pytest.fixture(scope="module")
def runners(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Runner]]:
    """One serving process per mode, each with its own deployments and the short step timeout (stopped by PID)."""
    tag = uuid.uuid4().hex[:6]
    started: dict[str, Runner] = {}
    try:
        for mode, options in MODES.items():
            started[mode] = Runner(
                prefect_server,
                tmp_path_factory.mktemp(f"serve-{mode}") / "data",
                name_suffix=f"timeouts-{mode}-{tag}",
                env={"UPSELL_FETCH_TIMEOUT_S": str(STEP_TIMEOUT_S)},
                **options,
            )
        for runner in started.values():
            runner.wait_ready()
        logger.info("%d serving processes ready", len(started))
        yield started
    finally:
        stopping_at = time.monotonic()
        # Their runs are settled and deleted by now, and a graceful stop is tested in test_stack_signals.py: a
        # SIGKILL spares the ~15 s the thread-mode runner's shutdown takes.
        for runner in started.values():
            runner.kill()
            runner.stop()
        logger.info("serving processes stopped in %.1f s", time.monotonic() - stopping_at)


@pytest.fixture(scope="module")
def served(runners: dict[str, Runner]) -> Iterator[Served]:
    """Every scenario in every mode at once, against a usage/CRM API and a Slack that never answer its accounts."""
    usage_api = UsageApiState(token="usage-token-timeouts")
    usage_url, stop_usage_api = serve_in_thread(create_app(usage_api))
    slack = SilentServer().start()
    accounts = {
        (scenario, mode): f"acct-{uuid.uuid4().hex[:10]}" for scenario, modes in SCENARIOS.items() for mode in modes
    }
    for (scenario, _mode), account in accounts.items():
        usage_api.usage[(account, METRIC)] = {"current": 150, "previous": 111, "threshold": 100, "period": "monthly"}
        usage_api.contracts[account] = {
            "company_name": f"Company {account}",
            "current_plan": "Growth",
            "current_spend": 30000,
            "contract_end_date": "2027-03-31",
            "renewal_date": "2027-03-01",
            "contact_info": {"name": "Dana", "email": f"buyer@{account}.example.com"},
        }
        if scenario == "hung-usage":
            usage_api.never_answer.add(f"/usage/{account}")
        if scenario == "hung-crm":
            usage_api.never_answer.add(f"/contracts/{account}")
    token = SecretStr(usage_api.token)
    documents = {
        "upsell-usage": HttpUsageSource(base_url=usage_url, token=token, timeout_s=LONG_CLIENT_TIMEOUT_S),
        "upsell-crm": HttpCrmSource(base_url=usage_url, token=token, timeout_s=CLIENT_TIMEOUT_S),
        "upsell-slack": SlackCredentials(
            bot_token=SecretStr("xoxb-silent"), base_url=f"{slack.base_url}/api/", timeout_s=LONG_CLIENT_TIMEOUT_S
        ),
    }
    upsells: list[Upsell] = []
    try:
        with saved_blocks(documents):
            started_at = time.monotonic()
            upsells = start_upsells(accounts, runners)
            created_in = time.monotonic() - started_at
            runs = wait_all_settled(upsells)
            logger.info(
                "%d upsells created in %.1f s, all settled in %.1f s",
                len(upsells),
                created_in,
                time.monotonic() - started_at,
            )
        yield Served(upsells, runs, usage_api, slack)
    finally:
        stopping_at = time.monotonic()
        delete_runs(upsells)  # the hung-slack ones wait a day for a reply: nothing else should find them
        slack.stop()
        usage_api.never_answer.clear()  # the requests still held (their clients gave up) end, so it stops at once
        stop_usage_api()
        logger.info("runs deleted and fakes stopped in %.1f s", time.monotonic() - stopping_at)


def start_upsells(accounts: dict[tuple[str, str], str], runners: dict[str, Runner]) -> list[Upsell]:
    """A FULL_AUTOMATION upsell per account (its only wait is the customer's reply), on its mode's deployment."""

    async def trigger() -> list[Upsell]:
        async with get_client() as client:
            run_ids = await asyncio.gather(
                *(
                    trigger_upsell_workflow(
                        client,
                        account_id,
                        f"evt-{uuid.uuid4().hex[:12]}",
                        AutomationLevel.FULL_AUTOMATION,
                        METRIC,
                        deployment_name=runners[mode].upsell_deployment,
                    )
                    for (_scenario, mode), account_id in accounts.items()
                )
            )
        return [Upsell(s, m, a, r) for ((s, m), a), r in zip(accounts.items(), run_ids, strict=True)]

    return asyncio.run(trigger())


def wait_all_settled(upsells: list[Upsell], timeout_s: float = 150) -> dict[UUID, FlowRun]:
    """Each run once it is final or waiting, or as it is at the deadline (the tests then name the mode)."""

    def settled(run: FlowRun) -> bool:
        return run.state is not None and (run.state.is_final() or run.state.is_paused())

    deadline = time.monotonic() + timeout_s
    runs = {u.run_id: read_run(u.run_id) for u in upsells}
    while time.monotonic() < deadline and not all(settled(r) for r in runs.values()):
        time.sleep(0.5)
        runs = {run_id: run if settled(run) else read_run(run_id) for run_id, run in runs.items()}
    return runs


def delete_runs(upsells: list[Upsell]) -> None:
    with get_client(sync_client=True) as client:
        for upsell in upsells:
            client.delete_flow_run(upsell.run_id)


def step_attempts(run_id: UUID, step: str) -> Attempts:
    """The attempts of the run's task run of `step`, timed from its state history (the engine's clock)."""
    (task_run,) = [t for t in task_runs(run_id) if t.name.startswith(f"{step}-")]
    assert isinstance(task_run, TaskRun) and task_run.state is not None and task_run.state.is_final(), task_run
    with get_client(sync_client=True) as client:
        states = sorted(client.read_task_run_states(task_run.id), key=lambda s: s.timestamp)
    times: list[datetime] = [s.timestamp for s in states]
    durations = [
        (times[i + 1] - times[i]).total_seconds() for i, s in enumerate(states[:-1]) if s.type is StateType.RUNNING
    ]
    first = next(s.timestamp for s in states if s.type is StateType.RUNNING)
    state = task_run.state
    result = state.result(raise_on_failure=False) if state.is_completed() else None
    return Attempts(durations, (times[-1] - first).total_seconds(), state.name, state.message or "", result)


def check_each_mode(served: Served, scenario: str, check: Callable[[Upsell], None]) -> None:
    """Run `check` for the scenario's upsell in every mode; fail naming every mode that failed."""
    failures = []
    for upsell in served.of(scenario):
        try:
            check(upsell)
        except AssertionError as exc:
            failures.append(f"{upsell.mode}: {exc}")
    assert not failures, "\n".join(failures)


def test_a_hung_read_times_out_at_the_step_timeout_on_every_attempt_and_the_run_ends(served: Served) -> None:
    """fetch_usage against a usage API that never answers (its client would wait 30 s): each of the 4 attempts
    ends at the step's timeout, and the run then ends Failed (the step is critical)."""

    def check(upsell: Upsell) -> None:
        state = served.runs[upsell.run_id].state
        assert state is not None and state.is_failed(), state
        attempts = step_attempts(upsell.run_id, "fetch_usage")
        logger.info("%s: fetch_usage, step timeout %.1f s: %s", upsell.mode, STEP_TIMEOUT_S, attempts.describe())
        assert attempts.state in ("TimedOut", "Failed") and "time" in attempts.message.lower(), attempts.describe()
        assert len(attempts.durations) == RETRIES + 1, attempts.describe()
        assert all(STEP_TIMEOUT_S - 0.1 <= d <= STEP_TIMEOUT_S + MARGIN_S for d in attempts.durations), (
            attempts.describe()
        )
        assert len(served.usage_api.requests_to(f"/usage/{upsell.account_id}")) == RETRIES + 1

    check_each_mode(served, "hung-usage", check)


def test_a_client_timeout_shorter_than_the_step_ends_each_attempt_first(served: Served) -> None:
    """fetch_contract against a CRM that never answers, its client's own timeout (1 s) shorter than the step's
    (3 s): that timeout ends each of the 4 attempts, and the run then ends Failed."""

    def check(upsell: Upsell) -> None:
        state = served.runs[upsell.run_id].state
        assert state is not None and state.is_failed(), state
        attempts = step_attempts(upsell.run_id, "fetch_contract")
        logger.info("%s: fetch_contract, client timeout %.1f s: %s", upsell.mode, CLIENT_TIMEOUT_S, attempts.describe())
        assert attempts.state == "Failed" and "ReadTimeout" in attempts.message, attempts.describe()
        assert len(attempts.durations) == RETRIES + 1, attempts.describe()
        assert all(CLIENT_TIMEOUT_S - 0.1 <= d < STEP_TIMEOUT_S for d in attempts.durations), attempts.describe()
        assert len(served.usage_api.requests_to(f"/contracts/{upsell.account_id}")) == RETRIES + 1

    check_each_mode(served, "hung-crm", check)


def test_a_hung_slack_post_ends_at_the_step_timeout_once_and_the_upsell_goes_on(served: Served) -> None:
    """post_slack_summary against a Slack that never answers (its client would wait 30 s): the post ends at the
    step's timeout, its outcome is unknown so it is never posted again, and the upsell goes on to the reply."""

    def check(upsell: Upsell) -> None:
        state = served.runs[upsell.run_id].state
        assert state is not None and state.is_paused() and state.state_details.pause_key == "reply", state
        attempts = step_attempts(upsell.run_id, "post_slack_summary")
        posts = len(served.slack.connections_with(upsell.account_id))
        logger.info(
            "%s: post_slack_summary, step timeout %.1f s: %s (%d post reached Slack)",
            upsell.mode,
            STEP_TIMEOUT_S,
            attempts.describe(),
            posts,
        )
        # The attempt that hung ended at the step's timeout; the retry found the send's outcome unknown and ended
        # at once without posting again.
        assert attempts.state == "Completed", attempts.describe()
        assert STEP_TIMEOUT_S - 0.1 <= attempts.durations[0] <= STEP_TIMEOUT_S + MARGIN_S, attempts.describe()
        assert attempts.total <= STEP_TIMEOUT_S + 2 * MARGIN_S, attempts.describe()
        result = SlackResult.model_validate(attempts.result)
        assert not result.posted and result.error, result
        # Posted at most once (on a loaded machine the timeout may strike while the step still waits on the API).
        assert posts <= 1

    check_each_mode(served, "hung-slack", check)


def test_each_process_serves_in_the_mode_named(runners: dict[str, Runner]) -> None:
    logs = {mode: runner.log_path.read_text() for mode, runner in runners.items()}
    assert "flow runs in threads of this process" in logs["threads"], logs["threads"][-2000:]
    assert "one process per flow run" in logs["processes"], logs["processes"][-2000:]
    assert "The in-process runner is unavailable" in logs["fallback"], logs["fallback"][-2000:]
    assert "one process per flow run" in logs["fallback"], logs["fallback"][-2000:]
