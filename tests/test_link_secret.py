"""No secret has a public default: without UPSELL_LINK_SECRET a random one is generated once and kept in the data
folder (mode 0600), shared by every process; production refuses a short secret, the placeholder postal address
and a loopback or plain-http public URL, naming the setting and never printing a value; a link signed with the
former built-in secret is refused."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from tasks.runtime.links import InvalidToken, LinkToken, sign_token, verify_token
from tasks.runtime.settings import LINK_SECRET_FILE, PLACEHOLDER_POSTAL_ADDRESS, UpsellSettings, get_settings
from tests.test_webhook_support import SECRET
from webhook.main import create_app
from webhook.settings import AlertIntakeSettings, ReceiverSettings

REPO = Path(__file__).resolve().parent.parent
#: The link secret every install had before it was generated: anyone could read it in the source.
FORMER_DEFAULT = "development-only-link-secret"
PRINT_SECRET = (
    "import logging; logging.basicConfig(level=logging.INFO); from tasks.runtime.settings import get_settings;"
    " print(get_settings().link_secret.get_secret_value())"
)
PRODUCTION = {
    "UPSELL_ENVIRONMENT": "production",
    "UPSELL_LINK_SECRET": "a-production-link-secret-" + "x" * 16,
    "UPSELL_SENDER_POSTAL_ADDRESS": "Acme Ltd, 2 Side Street, Springfield",
    "UPSELL_PUBLIC_BASE_URL": "https://upsell.example.com",
}


@pytest.fixture
def no_link_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UPSELL_LINK_SECRET", raising=False)  # the session sets one for all its processes


def _secret_in_new_process(data_dir: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "UPSELL_LINK_SECRET"} | {"UPSELL_DATA_DIR": str(data_dir)}
    return subprocess.Popen([sys.executable, "-c", PRINT_SECRET], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_missing_link_secret_is_generated_once_and_kept_private(
    no_link_secret: None, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="upsell")
    first = get_settings().link_secret.get_secret_value()
    path = data_dir / LINK_SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) >= 32
    assert FORMER_DEFAULT not in first
    assert get_settings().link_secret.get_secret_value() == first  # a second settings object: the same secret
    said = [r.getMessage() for r in caplog.records if r.name == "upsell"]
    assert said == [f"UPSELL_LINK_SECRET not set: generated a random link secret in {path.resolve()}"]  # once

    other = _secret_in_new_process(data_dir)  # another process of the machine (the receiver, a flow run)
    out, err = other.communicate(timeout=60)
    assert other.returncode == 0, err
    assert out.strip() == first and "using the link secret kept in" in err and "generated" not in err
    assert sorted(p.name for p in data_dir.iterdir()) == [LINK_SECRET_FILE]


def test_processes_starting_together_agree_on_one_secret(no_link_secret: None, data_dir: Path) -> None:
    started = [_secret_in_new_process(data_dir) for _ in range(4)]
    answers = [p.communicate(timeout=90) for p in started]
    assert all(p.returncode == 0 for p in started), [err for _out, err in answers]
    assert len({out.strip() for out, _err in answers}) == 1
    assert sum("generated a random link secret" in err for _out, err in answers) == 1  # one winner
    assert sorted(p.name for p in data_dir.iterdir()) == [LINK_SECRET_FILE]  # no temporary file left


def test_a_kept_secret_readable_by_others_is_made_private(
    no_link_secret: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kept = "k" * 40
    (tmp_path / LINK_SECRET_FILE).write_text(kept + "\n")
    (tmp_path / LINK_SECRET_FILE).chmod(0o644)
    assert UpsellSettings(data_dir=tmp_path).link_secret.get_secret_value() == kept
    assert stat.S_IMODE((tmp_path / LINK_SECRET_FILE).stat().st_mode) == 0o600
    assert any("readable by other users" in r.getMessage() for r in caplog.records)
    short = tmp_path / "short"
    short.mkdir()
    (short / LINK_SECRET_FILE).write_text("tiny")
    with pytest.raises(ValueError, match="no usable link secret") as refused:
        UpsellSettings(data_dir=short)
    assert "tiny" not in str(refused.value)


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("UPSELL_LINK_SECRET", "s3cr3t-but-short-Q7", "UPSELL_LINK_SECRET must be set, at least 32 characters"),
        ("UPSELL_LINK_SECRET", "x", "UPSELL_LINK_SECRET must be set, at least 32 characters"),
        ("UPSELL_SENDER_POSTAL_ADDRESS", PLACEHOLDER_POSTAL_ADDRESS, "UPSELL_SENDER_POSTAL_ADDRESS must be set"),
        ("UPSELL_PUBLIC_BASE_URL", "http://upsell.example.com", "UPSELL_PUBLIC_BASE_URL must be an https URL"),
        ("UPSELL_PUBLIC_BASE_URL", "https://127.0.0.1:8443", "UPSELL_PUBLIC_BASE_URL must be an https URL"),
        ("UPSELL_PUBLIC_BASE_URL", "https://localhost", "UPSELL_PUBLIC_BASE_URL must be an https URL"),
        ("UPSELL_PUBLIC_BASE_URL", "https://[::1]/", "UPSELL_PUBLIC_BASE_URL must be an https URL"),
    ],
)
def test_production_refuses_placeholders_naming_the_setting_not_its_value(
    monkeypatch: pytest.MonkeyPatch, setting: str, value: str, says: str
) -> None:
    for name, good in PRODUCTION.items():
        monkeypatch.setenv(name, good)
    assert get_settings().public_base_url == PRODUCTION["UPSELL_PUBLIC_BASE_URL"]  # the good values pass
    monkeypatch.setenv(setting, value)
    with pytest.raises(ValidationError, match=says) as refused:
        get_settings()
    assert "when UPSELL_ENVIRONMENT=production" in str(refused.value)
    if len(value) > 1:
        assert value not in str(refused.value)


def test_production_refuses_an_unset_public_url_and_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSELL_ENVIRONMENT", "production")
    monkeypatch.setenv("UPSELL_SENDER_POSTAL_ADDRESS", PRODUCTION["UPSELL_SENDER_POSTAL_ADDRESS"])
    with pytest.raises(ValidationError, match="UPSELL_PUBLIC_BASE_URL"):  # would be http://127.0.0.1:<port>
        get_settings()
    monkeypatch.delenv("UPSELL_SENDER_POSTAL_ADDRESS")
    monkeypatch.setenv("UPSELL_PUBLIC_BASE_URL", PRODUCTION["UPSELL_PUBLIC_BASE_URL"])
    with pytest.raises(ValidationError, match="UPSELL_SENDER_POSTAL_ADDRESS"):
        get_settings()


def test_settings_errors_never_print_the_value(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    leaked = f"do-not-print-{uuid.uuid4().hex}"
    monkeypatch.setenv("UPSELL_PORT", leaked)  # a field error: pydantic would show the input
    with pytest.raises(ValidationError) as refused:
        get_settings()
    assert "port" in str(refused.value) and leaked not in str(refused.value)
    assert leaked not in repr(refused.value.errors(include_input=False))
    monkeypatch.delenv("UPSELL_PORT")
    monkeypatch.setenv("UPSELL_WEBHOOK_SECRETS", "short-" + leaked[-8:])
    with pytest.raises(ValidationError, match="UPSELL_WEBHOOK_SECRETS") as refused:
        AlertIntakeSettings(data_dir=tmp_path)
    assert leaked[-8:] not in str(refused.value)
    monkeypatch.setenv("UPSELL_LINK_TTL_S", leaked)
    with pytest.raises(ValidationError) as refused:
        ReceiverSettings(data_dir=tmp_path)
    assert leaked not in str(refused.value)


def _token(run_id: str, wait: str, value: dict[str, object]) -> LinkToken:
    return LinkToken(flow_run_id=run_id, wait=wait, value=value, expires_at=int(time.time()) + 3600)


def test_a_link_signed_with_the_former_default_secret_is_refused(
    no_link_secret: None, prefect_server: str, tmp_path: Path
) -> None:
    settings = ReceiverSettings(webhook_secrets=SECRET, data_dir=tmp_path, receiver_db=tmp_path / "receiver.db",
                                prefect_api_url=prefect_server)
    assert settings.link_secret.get_secret_value() != FORMER_DEFAULT
    run_id = str(uuid.uuid4())
    reply = sign_token(_token(run_id, "reply", {"reply": "yes"}), FORMER_DEFAULT)
    unsubscribe = sign_token(_token(run_id, "unsubscribe", {"email": "a@example.com"}), FORMER_DEFAULT)
    with pytest.raises(InvalidToken):
        verify_token(reply, settings.link_secret.get_secret_value())
    genuine = sign_token(_token(run_id, "unsubscribe", {"email": "a@example.com"}),
                         settings.link_secret.get_secret_value())
    with TestClient(create_app(settings)) as client:
        assert client.get(f"/links/{reply}").status_code == 403
        assert client.post(f"/links/{reply}").status_code == 403
        assert client.get(f"/unsubscribe/{unsubscribe}").status_code == 403
        forged = client.post(f"/unsubscribe/{unsubscribe}", content=b"List-Unsubscribe=One-Click",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert forged.status_code == 403
        assert client.get(f"/unsubscribe/{genuine}").status_code == 200  # the kept secret's own link works
