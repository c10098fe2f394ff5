"""What the command line tells a person: the links follow the receiver's port, `upsell trigger` says which run it
started and how to follow it, `upsell runs` has a header row."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Cancelled, Pending
from typer.testing import CliRunner

from deployments.cli import app
from deployments.stack import base_env
from flows.upsell import upsell
from tasks.runtime.settings import UpsellSettings, get_settings
from webhook.serve import ReceiverThread
from webhook.settings import ReceiverSettings

SECRET = "cli-ux-test-secret-0123456789"

# ---- the links follow the receiver's port ----


def test_the_children_of_upsell_up_link_to_the_receivers_port(
    prefect_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = base_env(prefect_server, receiver_port=8312)
    assert env["UPSELL_PORT"] == "8312" and env["PREFECT_API_URL"] == prefect_server
    monkeypatch.delenv("UPSELL_PUBLIC_BASE_URL", raising=False)
    monkeypatch.setenv("UPSELL_PORT", env["UPSELL_PORT"])  # what a child of `upsell up` reads
    assert get_settings().public_base_url == "http://127.0.0.1:8312"
    assert ReceiverSettings(webhook_secrets=[SECRET]).public_base_url == "http://127.0.0.1:8312"

    monkeypatch.setenv("UPSELL_PUBLIC_BASE_URL", "https://upsell.example.com")  # set by the user: kept as is
    assert get_settings().public_base_url == "https://upsell.example.com"


def test_the_settings_derive_the_links_from_the_port_only_when_not_set() -> None:
    assert UpsellSettings().public_base_url == "http://127.0.0.1:8000"  # the documented default
    assert UpsellSettings(port=8312).public_base_url == "http://127.0.0.1:8312"
    assert UpsellSettings(port=8312).with_port(9001).public_base_url == "http://127.0.0.1:9001"
    explicit = UpsellSettings(port=8312, public_base_url="https://upsell.example.com")
    assert explicit.with_port(9001).public_base_url == "https://upsell.example.com"
    assert explicit.with_port(9001).port == 9001


def test_the_receiver_agrees_with_the_links_on_its_address(tmp_path: Path) -> None:
    settings = ReceiverSettings(webhook_secrets=[SECRET], data_dir=tmp_path)  # port 8000: the thread picks a free one
    with ReceiverThread(settings) as receiver:
        assert receiver.settings.port != 8000
        assert receiver.settings.public_base_url == receiver.url


# ---- upsell trigger ----


@pytest.fixture
def unserved(prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A deployment of the upsell flow nobody serves, which the CLI triggers (its runs stay Scheduled)."""
    name = f"cli-ux-{uuid.uuid4().hex[:8]}"
    upsell.to_deployment(name=name).apply()
    monkeypatch.setenv("UPSELL_DEPLOYMENT_NAME", f"upsell/{name}")
    return f"upsell/{name}"


def test_trigger_says_which_run_started_where_to_watch_it_and_how_to_answer_it(unserved: str, event_id: str) -> None:
    result = CliRunner().invoke(app, ["trigger", "12345", event_id, "--level", "HUMAN_INTERVENTION"])
    assert result.exit_code == 0, result.output
    run_id = result.output.split("Run id")[1].split()[0]
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(run_id))
    lines = result.output.splitlines()
    assert lines[0].startswith(f"Started upsell run 'upsell-12345-{event_id}-") and "account 12345" in lines[0]
    assert "HUMAN_INTERVENTION: asks a reviewer to approve the email before it is sent" in result.output
    assert f"/runs/flow-run/{run_id}" in result.output and result.output.count("http://") == 1
    assert f"upsell approve {run_id}" in result.output and f"upsell reply {run_id} yes|no|maybe" in result.output
    assert "upsell runs" in result.output
    assert run.parameters["automation_level"] == "HUMAN_INTERVENTION"

    with get_client(sync_client=True) as client:  # the run has started: a repeated alert gets it back, and says so
        client.set_flow_run_state(run.id, Pending(), force=True)
    again = CliRunner().invoke(app, ["trigger", "12345", event_id, "--level", "FULL_AUTOMATION"])
    assert again.exit_code == 0, again.output
    assert f"Alert {event_id} already has an upsell" in again.output and "now Pending" in again.output
    assert "HUMAN_INTERVENTION" in again.output and f"Run id       {run_id}" in again.output  # the first run's level
    with get_client(sync_client=True) as client:  # final, so no recovery sweep of another test takes it for dead
        client.set_flow_run_state(run.id, Cancelled(), force=True)


def test_trigger_json_and_the_severity_mapping_of_the_settings(
    unserved: str, event_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPSELL_SEVERITY_LEVELS", json.dumps({"high": "HUMAN_INTERVENTION"}))
    result = CliRunner().invoke(app, ["trigger", "12345", event_id, "--severity", "high", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["automation_level"] == "HUMAN_INTERVENTION"  # the receiver's mapping, not the built-in one
    assert shown["name"].startswith(f"upsell-12345-{event_id}-") and shown["url"].endswith(shown["flow_run_id"])


def test_trigger_without_the_deployment_says_what_to_start(
    prefect_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPSELL_DEPLOYMENT_NAME", f"upsell/not-served-{uuid.uuid4().hex[:8]}")
    result = CliRunner().invoke(app, ["trigger", "12345", "evt-nowhere"])
    assert result.exit_code == 2
    assert "deployment is not served: start `upsell up`" in result.output and "Traceback" not in result.output


# ---- upsell runs ----


def test_upsell_runs_has_a_header_row_its_columns_line_up_with(unserved: str, event_id: str) -> None:
    started = CliRunner().invoke(app, ["trigger", "12345", event_id, "--json"])
    assert started.exit_code == 0, started.output
    run_id = json.loads(started.output)["flow_run_id"]

    listed = CliRunner().invoke(app, ["runs", "--limit", "500"])
    assert listed.exit_code == 0, listed.output
    header, *rows = listed.output.splitlines()
    assert header.split() == ["Run", "State", "Waiting", "for", "Age", "(h)", "Run", "id", "Health"]
    row = next(line for line in rows if run_id in line)
    assert row.index(run_id) == header.index("Run id")
    assert row[header.index("State") :].startswith("Scheduled") and row[header.index("Health") :] == "queued"
