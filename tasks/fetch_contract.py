"""Step 2: fetch the account's contract from the CRM."""

from __future__ import annotations

from prefect import task
from pydantic import ValidationError

from blocks.registry import resolve
from flows.models import ContractData
from tasks.content.admission import accept_contract, malformed
from tasks.runtime.policy import FETCH_STEP, step_options
from tasks.runtime.settings import get_settings


@task(**step_options("fetch_contract", FETCH_STEP))
def fetch_contract(account_id: str) -> ContractData:
    """Fetch the account's contract and contact from the CRM (one validated recipient, text cleaned)."""
    try:
        contract = resolve("crm", get_settings()).client.fetch_contract(account_id)
    except ValidationError as exc:  # a malformed answer: the upsell stops for a human, not retried
        raise malformed(exc, "contract") from None
    return accept_contract(contract, account_id, max_spend=get_settings().max_contract_spend)
