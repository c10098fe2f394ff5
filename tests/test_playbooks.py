"""Playbooks as configuration: validation with the line and field of each error, the choice of a playbook by
segment, `upsell playbooks check`, and the receiver and the serving process refusing an invalid file."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from deployments.cli import app
from deployments.serve import main as serve_main
from flows.models import AutomationLevel, ContractData, UsageAlert
from flows.playbooks import DEFAULT_PLAYBOOK, PlaybookFileError, load_playbooks, parse_playbooks
from webhook.main import create_app
from webhook.settings import ReceiverSettings

GOOD = """\
playbooks:
  - name: enterprise
    description: Large accounts get a human first
    segment:
      plans: [Enterprise]
      spend_min: 100000
    automation_level: HUMAN_INTERVENTION
    reply_timeout_hours: 72
    follow_up: {after_hours: 48}
    variants:
      - {name: short, weight: 1, subject: "Room to grow"}
      - {name: roi, weight: 3, template: upsell_email}
  - name: api-critical
    segment: {metrics: [api_calls], severities: [critical]}
    send_window: {start: "08:30", end: "18:00", weekdays: [0, 1, 2, 3]}
"""

BAD = """\
playbooks:
  - name: enterprise
    segment:
      spend_min: 500
      spend_max: 100
  - name: Not A Slug
    automation_level: SOMETIMES
    variants:
      - {name: only}
    colour: red
  - name: enterprise
"""


def _alert(metric: str = "api_calls", severity: str = "critical") -> UsageAlert:
    return UsageAlert(event_id="evt-pb", account_id="acct-pb", metric_type=metric, current_value=150,
                      threshold=100, severity=severity)  # fmt: skip


def _contract(plan: str, spend: float) -> ContractData:
    return ContractData(account_id="acct-pb", current_plan=plan, contract_end_date="2027-03-31",
                        renewal_date="2027-03-01", current_spend=spend)  # fmt: skip


def test_a_valid_file_loads_in_order_with_the_default_last() -> None:
    book = parse_playbooks(GOOD)
    assert [p.name for p in book.all] == ["enterprise", "api-critical", "default"]
    enterprise = book.named("enterprise")
    assert enterprise.automation_level is AutomationLevel.HUMAN_INTERVENTION
    assert [(v.name, v.weight) for v in enterprise.variants] == [("short", 1.0), ("roi", 3.0)]
    window = book.named("api-critical").send_window
    assert window is not None and (window.start.isoformat(), window.weekdays) == ("08:30:00", [0, 1, 2, 3])


def test_every_error_is_reported_with_its_line_and_field() -> None:
    with pytest.raises(PlaybookFileError) as caught:
        parse_playbooks(BAD, Path("pb.yaml"))
    found = {(p.line, p.field) for p in caught.value.problems}
    assert (3, "playbooks.0.segment") in found  # spend_min >= spend_max, reported on the segment's line
    assert (6, "playbooks.1.name") in found
    assert (7, "playbooks.1.automation_level") in found
    assert (10, "playbooks.1.colour") in found  # unknown fields are refused, not ignored
    text = str(caught.value)
    assert "line 7: playbooks.1.automation_level:" in text and "pb.yaml" in text


def test_a_single_variant_duplicate_names_and_a_late_follow_up_are_refused() -> None:
    one_variant = "playbooks:\n  - name: a\n    variants: [{name: only}]\n"
    dupes = "playbooks:\n  - name: a\n  - name: a\n"
    late = "playbooks:\n  - name: a\n    reply_timeout_hours: 24\n    follow_up: {after_hours: 24}\n"
    for text, message in ((one_variant, "two or more variants"), (dupes, "unique"), (late, "shorter")):
        with pytest.raises(PlaybookFileError, match=message):
            parse_playbooks(text)


def test_broken_yaml_names_its_line() -> None:
    with pytest.raises(PlaybookFileError) as caught:
        parse_playbooks("playbooks:\n  - name: a\n    segment: {plans: [x\n")
    assert caught.value.problems[0].line is not None and "YAML" in caught.value.problems[0].message


def test_the_first_matching_playbook_is_chosen_and_plan_segments_wait_for_the_contract() -> None:
    book = parse_playbooks(GOOD)
    assert book.choose(_alert()).name == "api-critical"  # enterprise needs the contract to match
    assert book.choose(_alert(), _contract("enterprise", 250_000)).name == "enterprise"  # plan names ignore case
    assert book.choose(_alert(), _contract("Enterprise", 99_999)).name == "api-critical"  # below the band
    assert book.choose(_alert(severity="high"), _contract("Growth", 10)).name == "default"
    assert load_playbooks(None).choose(_alert()) == DEFAULT_PLAYBOOK  # no file: the design's behaviour


def test_upsell_playbooks_check_prints_ok_or_each_error(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text(BAD)
    ok = CliRunner().invoke(app, ["playbooks", "check", str(good)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.splitlines()[0] == "ok" and "enterprise" in ok.output and "default" in ok.output
    refused = CliRunner().invoke(app, ["playbooks", "check", str(bad)])
    assert refused.exit_code == 1
    assert f"{bad}:line 7: playbooks.1.automation_level:" in refused.output
    missing = CliRunner().invoke(app, ["playbooks", "check", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 1 and "cannot read" in missing.output


def test_the_receiver_and_the_serving_process_refuse_an_invalid_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    with pytest.raises(PlaybookFileError):
        create_app(ReceiverSettings(playbooks_file=bad, webhook_secrets=["s" * 32]))
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    assert create_app(ReceiverSettings(playbooks_file=good, webhook_secrets=["s" * 32])).state.playbooks.named(
        "enterprise"
    )
    monkeypatch.setenv("UPSELL_PLAYBOOKS_FILE", str(bad))
    with pytest.raises(SystemExit) as exited:  # before it talks to any Prefect API
        serve_main(["--no-rate-limits", "--sweep-interval", "0"])
    assert exited.value.code == 2
    served = capsys.readouterr()
    assert "Invalid playbooks" in served.err and "line 7: playbooks.1.automation_level" in served.err


def test_the_flow_follows_the_accounts_playbook_and_records_it_on_the_opportunity(
    tmp_path: Path, data_dir: Path, event_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blocks.mongo import SqliteOpportunityStore
    from flows.upsell import upsell
    from tests.support import run_answering_reply

    playbooks = tmp_path / "playbooks.yaml"
    playbooks.write_text("playbooks:\n  - name: big-spenders\n    segment: {spend_min: 1000000000}\n"
                         "  - name: trading\n    segment: {metrics: [trade_volume]}\n")  # fmt: skip
    monkeypatch.setenv("UPSELL_PLAYBOOKS_FILE", str(playbooks))
    alert = UsageAlert(event_id=event_id, account_id="12345", metric_type="trade_volume", current_value=150,
                       threshold=100, severity="critical")  # fmt: skip
    run_answering_reply(alert, "no")
    logged = SqliteOpportunityStore(data_dir / "upsell.db").get_opportunity(event_id)
    assert logged is not None and logged.playbook == "trading"  # the spend band did not match this contract

    playbooks.write_text(BAD)
    refused = UsageAlert(event_id=f"{event_id}-bad", account_id="12345", metric_type="trade_volume",
                         current_value=150, threshold=100, severity="critical")  # fmt: skip
    with pytest.raises(PlaybookFileError):
        upsell(refused)
    assert not (data_dir / "outbox").exists() or not list((data_dir / "outbox").glob(f"{refused.event_id}*"))
