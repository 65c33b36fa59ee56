"""The dev stack's webhook signing secret: generated once per install, kept in the data dir."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

SECRET_FILE_NAME = "webhook-secret"


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def install_webhook_secret(data_dir: Path) -> tuple[str, Path]:
    """The secret kept in ``data_dir`` (created on first use, readable by its owner only)."""
    path = data_dir / SECRET_FILE_NAME
    if path.exists():
        secret = path.read_text().strip()
        if secret:
            return secret, path
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = new_webhook_secret()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret + "\n")
    return secret, path
