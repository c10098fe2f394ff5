"""The HTTP usage and CRM sources through httpx against a fake API served over real HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prefect import flow
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.states import State
from pydantic import SecretStr

from blocks.interfaces import PermanentError
from blocks.sources import HttpCrmSource, HttpUsageSource
from flows.models import ContractData, UsageAlert, UsageData
from tasks.content.untrusted import UnsafeData
from tasks.fetch_contract import fetch_contract
from tasks.fetch_usage import fetch_usage
from tasks.runtime.policy import configured
from tests.fakes.server import serve_in_thread
from tests.fakes.usage_api import UsageApiState, create_app

TOKEN = "usage-token"


@pytest.fixture(scope="module")
def usage_server() -> Iterator[tuple[str, UsageApiState]]:
    state = UsageApiState(token=TOKEN)
    url, stop = serve_in_thread(create_app(state))
    try:
        yield url, state
    finally:
        stop()


@pytest.fixture
def api(usage_server: tuple[str, UsageApiState]) -> Iterator[UsageApiState]:
    _, state = usage_server
    state.reset()
    yield state
    state.reset()


@pytest.fixture
def api_url(usage_server: tuple[str, UsageApiState]) -> str:
    return usage_server[0]


@pytest.fixture
def save_block() -> Iterator[Callable[[Block, str], None]]:
    """Save a block document for one test; deleted afterwards (documents are global on the test server)."""
    saved: list[tuple[type[Block], str]] = []

    def save(block: Block, name: str) -> None:
        block.save(name, overwrite=True)
        saved.append((type(block), name))

    yield save
    for cls, name in saved:
        cls.delete(name)


def _alert(account_id: str, metric: str = "api_calls") -> UsageAlert:
    return UsageAlert(event_id=f"evt-{uuid.uuid4().hex[:12]}", account_id=account_id, metric_type=metric)


def _account() -> str:
    return f"acct-{uuid.uuid4().hex[:8]}"


def _contract_body(**changes: Any) -> dict[str, Any]:
    return {
        "company_name": "Acme Trading",
        "current_plan": "Growth",
        "contract_end_date": "2027-06-30",
        "renewal_date": "2027-06-01",
        "current_spend": 30000,
        "contact_info": {"name": "Ada Lovelace", "email": "ada@acme.example", "title": "CTO"},
        **changes,
    }


def _task_state_names(flow_state: State) -> list[str]:
    """The state history of the only task run of a flow run, oldest first."""
    flow_run_id = flow_state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        assert len(task_runs) == 1
        states = client.read_task_run_states(task_runs[0].id)
    return [s.name for s in sorted(states, key=lambda s: s.timestamp)]


@flow(name="fetch-usage-check")
def _usage_flow(alert: UsageAlert) -> UsageData:
    """Run the real fetch_usage task (its retries and retry condition) inside a flow run."""
    return configured(fetch_usage)(alert)


@flow(name="fetch-contract-check")
def _contract_flow(account_id: str) -> ContractData:
    """Run the real fetch_contract task inside a flow run."""
    return configured(fetch_contract)(account_id)


# ---- the clients, straight ----


def test_usage_fields_are_mapped_and_the_token_is_sent(api: UsageApiState, api_url: str) -> None:
    account = _account()
    api.usage[(account, "api_calls")] = {"value": 1500, "last_period": 1000, "limit": 1000, "period": "weekly"}
    source = HttpUsageSource(
        base_url=api_url,
        token=SecretStr(TOKEN),
        field_mapping={"current": "value", "previous": "last_period", "threshold": "limit"},
    )

    usage = source.get_client().fetch_usage(_alert(account))

    assert usage.account_id == account and usage.metric_type == "api_calls"
    assert usage.current_usage == 1500
    assert usage.usage_period == "weekly"
    assert usage.growth_rate == pytest.approx(0.5) and usage.usage_trend == "increasing"
    assert usage.threshold_exceeded == pytest.approx(0.5)
    assert usage.additional_context["source"] == api_url
    [seen] = api.seen
    assert seen.path == f"/usage/{account}" and seen.params == {"metric": "api_calls"}
    assert seen.authorization == f"Bearer {TOKEN}"


def test_usage_in_our_own_shape_passes_through(api: UsageApiState, api_url: str) -> None:
    account = _account()
    api.usage[(account, "seats")] = {
        "current_usage": 80,
        "usage_trend": "stable",
        "usage_period": "monthly",
        "threshold_exceeded": 0.1,
    }
    usage = HttpUsageSource(base_url=api_url, token=SecretStr(TOKEN)).get_client().fetch_usage(_alert(account, "seats"))
    assert (usage.current_usage, usage.usage_trend, usage.metric_type) == (80, "stable", "seats")


def test_contract_fields_are_mapped(api: UsageApiState, api_url: str) -> None:
    account = _account()
    body = _contract_body(name="Acme Trading Ltd", arr=48000)
    del body["company_name"], body["current_spend"]
    api.contracts[account] = {**body, "account_id": "someone-else"}  # the path's account wins
    source = HttpCrmSource(
        base_url=api_url, token=SecretStr(TOKEN), field_mapping={"company_name": "name", "current_spend": "arr"}
    )

    contract = source.get_client().fetch_contract(account)

    assert contract.account_id == account
    assert (contract.company_name, contract.current_spend, contract.current_plan) == (
        "Acme Trading Ltd",
        48000,
        "Growth",
    )
    assert contract.contact_email == "ada@acme.example"
    assert api.seen[0].authorization == f"Bearer {TOKEN}"


def test_wrong_token_is_a_permanent_error(api: UsageApiState, api_url: str) -> None:
    account = _account()
    api.contracts[account] = _contract_body()
    with pytest.raises(PermanentError, match="401"):
        HttpCrmSource(base_url=api_url, token=SecretStr("stale")).get_client().fetch_contract(account)
    with pytest.raises(PermanentError, match="401"):
        HttpCrmSource(base_url=api_url).get_client().fetch_contract(account)  # no token: no header at all
    assert [s.authorization for s in api.seen] == ["Bearer stale", None]


def test_token_is_not_shown_in_the_block_repr(api_url: str) -> None:
    assert TOKEN not in repr(HttpUsageSource(base_url=api_url, token=SecretStr(TOKEN)))


# ---- the tasks, inside a flow run, with their retry policy ----


def test_fetch_usage_is_retried_on_500_then_succeeds(api: UsageApiState, api_url: str, save_block: Any) -> None:
    account = _account()
    api.usage[(account, "api_calls")] = {"current": 200, "previous": 100, "threshold": 150}
    api.fail_500 = 2
    save_block(HttpUsageSource(base_url=api_url, token=SecretStr(TOKEN)), "upsell-usage")

    state = _usage_flow(_alert(account), return_state=True)

    assert state.is_completed(), state.message
    assert state.result().current_usage == 200
    assert len(api.requests_to("/usage/")) == 3
    names = _task_state_names(state)
    assert names.count("AwaitingRetry") == 2, names
    assert names[-1] == "Completed"


def test_unknown_account_404_is_permanent_and_not_retried(api: UsageApiState, api_url: str, save_block: Any) -> None:
    save_block(HttpUsageSource(base_url=api_url, token=SecretStr(TOKEN)), "upsell-usage")

    state = _usage_flow(_alert(_account()), return_state=True)

    assert state.is_failed()
    with pytest.raises(PermanentError, match="404"):
        state.result()
    assert len(api.requests_to("/usage/")) == 1
    assert "AwaitingRetry" not in _task_state_names(state)


def test_malformed_body_is_not_retried(api: UsageApiState, api_url: str, save_block: Any) -> None:
    account = _account()
    api.usage[(account, "api_calls")] = {"current": 200}
    api.malformed = 1
    save_block(HttpUsageSource(base_url=api_url, token=SecretStr(TOKEN)), "upsell-usage")

    state = _usage_flow(_alert(account), return_state=True)

    assert state.is_failed()
    with pytest.raises(UnsafeData, match=r"^usage\.current is missing or malformed$"):  # the field, not the value
        state.result()
    assert len(api.requests_to("/usage/")) == 1
    assert "AwaitingRetry" not in _task_state_names(state)


def test_fetch_contract_retries_429_and_a_slow_answer(api: UsageApiState, api_url: str, save_block: Any) -> None:
    account = _account()
    api.contracts[account] = _contract_body()
    api.throttle_429 = 1
    api.slow_count, api.slow_s = 1, 1.5
    save_block(HttpCrmSource(base_url=api_url, token=SecretStr(TOKEN), timeout_s=0.3), "upsell-crm")

    state = _contract_flow(account, return_state=True)

    assert state.is_completed(), state.message
    assert state.result().company_name == "Acme Trading"
    assert len(api.requests_to("/contracts/")) == 3  # 429, read timeout, answer
    assert _task_state_names(state).count("AwaitingRetry") == 2


def test_without_a_saved_block_the_fixture_source_stands_in(api: UsageApiState) -> None:
    state = _contract_flow("12345", return_state=True)
    assert state.is_completed()
    assert state.result().account_id == "12345"
    assert api.seen == []
