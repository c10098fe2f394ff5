"""Step 2: fetch the account's contract from the CRM."""

from __future__ import annotations

from prefect import task

from flows.models import ContractData
from tasks.integrations import resolve
from tasks.policy import FETCH_TIMEOUT_S, step_options


@task(name="fetch_contract", **step_options(FETCH_TIMEOUT_S))
def fetch_contract(account_id: str) -> ContractData:
    """Fetch the account's contract and contact from the CRM."""
    return resolve("crm").client.fetch_contract(account_id)
