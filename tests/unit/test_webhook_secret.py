"""No well-known webhook secret: one per install, and none means no notifier (pure + process)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pixpipe.dev.webhook_secret import install_webhook_secret, new_webhook_secret
from pixpipe.settings import Settings
from pixpipe_services.notifier.main import MissingWebhookSecret, Notifier

ROOT = Path(__file__).resolve().parents[2]


def test_secrets_are_random_standard_webhooks_secrets() -> None:
    first, second = new_webhook_secret(), new_webhook_secret()
    assert first != second
    assert first.startswith("whsec_") and len(base64.b64decode(first[6:])) == 32


def test_an_install_keeps_its_own_secret_readable_by_its_owner_only(tmp_path: Path) -> None:
    secret, path = install_webhook_secret(tmp_path / "data")
    assert path.stat().st_mode & 0o777 == 0o600
    assert install_webhook_secret(tmp_path / "data") == (secret, path)
    assert install_webhook_secret(tmp_path / "other")[0] != secret


def test_there_is_no_default_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIXPIPE_WEBHOOK_SECRET", raising=False)
    settings = Settings(_env_file=None)
    assert settings.webhooks.secret is None
    with pytest.raises(MissingWebhookSecret, match="PIXPIPE_WEBHOOK_SECRET is not set"):
        Notifier(settings)


def test_a_notifier_started_without_a_secret_refuses_clearly(tmp_path: Path) -> None:
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("PIXPIPE_")}
    environment["PIXPIPE_DATA_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-m", "pixpipe_services.notifier.main"],
                            env=environment, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 2
    assert "PIXPIPE_WEBHOOK_SECRET" in result.stderr and "Traceback" not in result.stderr


def test_compose_demands_a_secret_rather_than_supplying_one() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "${PIXPIPE_WEBHOOK_SECRET:?" in compose
    assert "whsec_" not in compose.replace("(whsec_", "")
