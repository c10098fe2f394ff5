"""The upsell-backfill flow submits a window's alerts through the receiver: each event once, dry runs change
nothing, and a second pass finds everything already handled."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

from flows.backfill import upsell_backfill
from flows.upsell import upsell
from webhook.serve import ReceiverThread
from webhook.settings import ReceiverSettings

WINDOW_END = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)


@pytest.fixture
def receiver(monkeypatch, prefect_server):
    # A deployment that is registered but not served: triggered runs stay Scheduled and nothing executes.
    name = f"backfill-{uuid.uuid4().hex[:8]}"
    upsell.to_deployment(name=name).apply()
    monkeypatch.setenv("UPSELL_DEPLOYMENT_NAME", f"upsell/{name}")
    monkeypatch.setenv("UPSELL_WEBHOOK_SECRETS", "backfill-test-secret-0123456789")
    with ReceiverThread(ReceiverSettings(port=0)) as running:
        monkeypatch.setenv("UPSELL_PUBLIC_BASE_URL", running.url)
        yield name


def _runs_of(deployment: str) -> int:
    with get_client(sync_client=True) as client:
        return len(client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])), limit=50))


def test_backfill_triggers_each_qualifying_alert_once(receiver):
    dry = upsell_backfill(window_hours=24, end=WINDOW_END, dry_run=True)
    assert (dry.scanned, dry.qualifying, dry.would_trigger, dry.triggered) == (8, 7, 7, 0)
    assert _runs_of(receiver) == 0  # a dry run starts nothing

    first = upsell_backfill(window_hours=24, end=WINDOW_END)
    # 7 qualifying alerts on 5 accounts: one upsell per account, the second alert of an account is attached
    assert (first.scanned, first.qualifying, first.triggered, first.already_handled) == (8, 7, 5, 2)
    assert {s.event_id for s in first.submissions if s.verdict == "not_qualifying"} == {
        "scan-34567-trade_volume-20261101"
    }
    assert _runs_of(receiver) == 5

    again = upsell_backfill(window_hours=24, end=WINDOW_END)
    assert (again.triggered, again.already_handled, again.qualifying) == (0, 7, 7)
    assert _runs_of(receiver) == 5
