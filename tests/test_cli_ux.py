"""What the command line tells a person: the links follow the receiver's port, `upsell trigger` says which run it
started and how to follow it, `upsell runs` has a header row; every command talks to the Prefect API it means
(PREFECT_API_URL, else the stack `upsell up` recorded), never to a throwaway server of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Cancelled, Pending
from typer.testing import CliRunner

from deployments.cli import NO_API, app, ui_url_of
from deployments.stack import StackRecord, base_env, stack_file, write_stack_record
from flows.upsell import upsell
from tasks.runtime.settings import UpsellSettings, get_settings
from webhook.ports import free_port
from webhook.serve import ReceiverThread
from webhook.settings import ReceiverSettings

REPO = Path(__file__).resolve().parent.parent
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


# ---- which Prefect API the commands use ----


def _upsell(args: list[str], data_dir: Path, prefect_home: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """`upsell <args>` in a process of its own, as a second shell runs it: no PREFECT_API_URL, this data folder and
    Prefect home; returns the result and how long it took."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"UPSELL_DATA_DIR": str(data_dir), "PREFECT_HOME": str(prefect_home)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "deployments.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    return done, time.monotonic() - started


def test_without_an_api_or_a_stack_a_command_says_so_in_one_line_and_starts_no_server(
    data_dir: Path, tmp_path: Path
) -> None:
    home = tmp_path / "prefect-home"
    for args in (["runs"], ["trigger", "12345", "evt-no-api"]):
        done, took = _upsell(args, data_dir, home)
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.strip() == f"Error: {NO_API}" and done.stdout == ""
        assert took < 8, took  # a throwaway Prefect server takes ~15 s to start
    assert not (home / "prefect.db").exists()  # where a throwaway server would have put its database

    gone = f"http://127.0.0.1:{free_port()}/api"  # the stack was killed without removing its record
    write_stack_record(data_dir, StackRecord(prefect_api_url=gone, ui_url=ui_url_of(gone),
                                             receiver_url="http://127.0.0.1:1", pid=1))  # fmt: skip
    done, _took = _upsell(["runs"], data_dir, home)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"the stack recorded in {stack_file(data_dir)} is gone" in done.stderr and gone in done.stderr

    helped, _took = _upsell(["trigger", "--help"], data_dir, home)  # help needs no API
    assert helped.returncode == 0 and "account_id" in helped.stdout, helped.stderr


def test_with_the_stack_recorded_a_command_uses_its_api_and_links_to_its_ui(
    unserved: str, event_id: str, prefect_server: str, data_dir: Path, tmp_path: Path
) -> None:
    ui_url = ui_url_of(prefect_server)
    assert not ui_url.endswith(":4200")
    write_stack_record(data_dir, StackRecord(prefect_api_url=prefect_server, ui_url=ui_url,
                                             receiver_url="http://127.0.0.1:1", pid=os.getpid()))  # fmt: skip
    started, _took = _upsell(["trigger", "12345", event_id, "--level", "HUMAN_INTERVENTION"], data_dir, tmp_path)
    assert started.returncode == 0, started.stdout + started.stderr
    run_id = started.stdout.split("Run id")[1].split()[0]
    assert f"Watch it     {ui_url}/runs/flow-run/{run_id}" in started.stdout
    assert "Traceback" not in started.stderr
    with get_client(sync_client=True) as client:  # the run is on the recorded server
        assert client.read_flow_run(UUID(run_id)).parameters["alert"]["event_id"] == event_id

    listed, _took = _upsell(["runs", "--json", "--limit", "500"], data_dir, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert run_id in {row["flow_run_id"] for row in json.loads(listed.stdout)}
    with get_client(sync_client=True) as client:  # final, so no recovery sweep of another test takes it for dead
        client.set_flow_run_state(UUID(run_id), Cancelled(), force=True)


def test_prefect_api_url_comes_before_the_stack_recorded(prefect_server: str, data_dir: Path) -> None:
    gone = f"http://127.0.0.1:{free_port()}/api"
    write_stack_record(data_dir, StackRecord(prefect_api_url=gone, ui_url=ui_url_of(gone),
                                             receiver_url="http://127.0.0.1:1", pid=1))  # fmt: skip
    listed = CliRunner().invoke(app, ["runs", "--json", "--limit", "1"])  # the session's PREFECT_API_URL
    assert listed.exit_code == 0, listed.output
    assert isinstance(json.loads(listed.output), list)


def test_a_prefect_api_url_that_does_not_answer_is_said_in_one_line() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    gone = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings(updates={PREFECT_API_URL: gone}):
        result = CliRunner().invoke(app, ["runs"])
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: PREFECT_API_URL={gone} does not answer: start its server, or unset it" \
        " to use the stack `upsell up` records"
