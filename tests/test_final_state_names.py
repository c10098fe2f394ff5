"""The run list tells outcomes apart: an upsell run ends Completed under a name for its outcome (its result is
still the UpsellOutcome), and the scheduled sweeps run under names of their own, outside the `upsell` tag."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from uuid import uuid4

import yaml
from prefect.client.schemas.objects import StateType

from deployments.serve import build_deployments
from flows.backfill import upsell_backfill
from flows.models import EXPIRED_WAIT_INPUT, CustomerReply, UpsellOutcome, UpsellStatus, UsageAlert
from flows.recovery import upsell_recovery
from flows.reply_timeouts import reply_timeouts
from flows.upsell import OUTCOME_STATE_NAMES, OUTCOME_TAGS, outcome_state_name, outcome_tag, upsell
from tests.conftest import REPO
from tests.support import find_run_id, read_run, resume, wait_until_paused


def outcome(status: UpsellStatus, reply: CustomerReply | None = None, note: str = "") -> UpsellOutcome:
    return UpsellOutcome(status=status, event_id="e", account_id="a", automation_level="HYBRID", email_sent=True,
                         reply=reply, reviewer_note=note)  # fmt: skip


def test_every_outcome_has_a_name_of_its_own():
    names = {
        "won": outcome_state_name(outcome(UpsellStatus.COMPLETED, CustomerReply.YES)),
        "declined": outcome_state_name(outcome(UpsellStatus.COMPLETED, CustomerReply.NO)),
        "maybe": outcome_state_name(outcome(UpsellStatus.COMPLETED, CustomerReply.MAYBE)),
        "no reply": outcome_state_name(outcome(UpsellStatus.COMPLETED, CustomerReply.NO_REPLY)),
        "rejected": outcome_state_name(outcome(UpsellStatus.REJECTED, CustomerReply.YES, "not now")),
        "timed out": outcome_state_name(
            outcome(UpsellStatus.REJECTED, None, EXPIRED_WAIT_INPUT["approve-email"]["note"])
        ),
        "suppressed": outcome_state_name(outcome(UpsellStatus.SUPPRESSED, CustomerReply.NO_REPLY)),
        "needs review": outcome_state_name(outcome(UpsellStatus.NEEDS_REVIEW, CustomerReply.YES)),
    }
    assert names == {
        "won": "Won", "declined": "Declined", "maybe": "Maybe later", "no reply": "No reply",
        "rejected": "Rejected", "timed out": "Not approved in time", "suppressed": "Suppressed",
        "needs review": "Needs review",
    }  # fmt: skip
    assert set(names.values()) <= OUTCOME_STATE_NAMES
    tags = {outcome_tag(outcome(UpsellStatus.COMPLETED, CustomerReply.MAYBE)),
            outcome_tag(outcome(UpsellStatus.REJECTED, None, EXPIRED_WAIT_INPUT["approve-email"]["note"]))}
    assert tags == {"outcome:maybe-later", "outcome:not-approved-in-time"} and tags <= OUTCOME_TAGS
    for status in UpsellStatus:  # a status added later gets a name too (else this raises KeyError)
        assert outcome_state_name(outcome(status)) in OUTCOME_STATE_NAMES


def test_a_rejected_run_ends_completed_named_rejected_and_a_direct_call_still_returns_the_outcome(event_id):
    alert = UsageAlert(event_id=event_id, account_id="12345", metric_type="trade_volume", severity="high")
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(upsell, alert)
        run_id = find_run_id(alert.run_name)
        wait_until_paused(run_id, "reply")
        resume(run_id, "reply", {"reply": "yes"})
        wait_until_paused(run_id, "review")
        resume(run_id, "review", {"approved": False, "estimated_value": 0, "note": "budget frozen"})
        result = future.result(timeout=60)
    assert isinstance(result, UpsellOutcome) and result.status is UpsellStatus.REJECTED
    state = read_run(run_id).state
    assert state is not None and state.type is StateType.COMPLETED and state.name == "Rejected"
    assert state.message == "Rejected by a reviewer; note: budget frozen."
    assert "outcome:rejected" in read_run(run_id).tags  # the run list filters on it
    assert UpsellOutcome.model_validate(state.result()) == result  # the persisted result is the outcome too


def test_a_declined_run_is_named_declined_when_called_for_its_state(event_id):
    alert = UsageAlert(event_id=event_id, account_id="12345", metric_type="trade_volume", severity="critical")
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(upsell, alert, return_state=True)
        run_id = find_run_id(alert.run_name)
        wait_until_paused(run_id, "reply")
        resume(run_id, "reply", {"reply": "no"})
        state = future.result(timeout=60)
    assert state.is_completed() and state.name == "Declined"
    assert "outcome:declined" in read_run(state.state_details.flow_run_id).tags
    assert UpsellOutcome.model_validate(state.result()).reply is CustomerReply.NO


def test_the_sweeps_run_under_names_that_say_what_they_are():
    before = datetime.now(UTC).replace(microsecond=0)
    states = [
        reply_timeouts(return_state=True),
        upsell_recovery(flow_run_ids=[uuid4()], return_state=True),  # a run that does not exist: nothing to do
        upsell_backfill(window_hours=0.01, end=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), dry_run=True,
                        return_state=True),  # fmt: skip
    ]
    names = [read_run(state.state_details.flow_run_id).name for state in states]
    assert names[0].startswith("reply-timeouts-sweep-") and names[1].startswith("recovery-sweep-")
    for name in names[:2]:
        assert datetime.strptime(name.rsplit("-", 2)[-2] + name.rsplit("-", 1)[-1], "%Y%m%d%H%M%S").replace(
            tzinfo=UTC
        ) >= before
    assert names[2] == "backfill-20260102-030405-dry-run"


def test_only_upsell_runs_carry_the_upsell_tag():
    declared = {d["name"]: d["tags"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    assert declared == {
        "upsell": ["upsell"], "reply-timeouts": ["maintenance"], "upsell-recovery": ["maintenance"],
        "upsell-backfill": ["maintenance"], "upsell-report": ["report"],
    }  # fmt: skip
    served = {d.name: d.tags for d in build_deployments(sweep_interval_s=0)}
    assert served == declared  # what `upsell serve` / `upsell up` register
