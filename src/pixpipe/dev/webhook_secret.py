"""The dev stack's own secrets, generated once per install and kept in the data dir: the
webhook signing secret and the embedded NATS server's token."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from pixpipe.webhook_signature import new_webhook_secret

__all__ = ["NATS_TOKEN_FILE_NAME", "SECRET_FILE_NAME", "install_nats_token",
           "install_webhook_secret", "new_webhook_secret"]

SECRET_FILE_NAME = "webhook-secret"  # noqa: S105  (a file name, not a secret)
NATS_TOKEN_FILE_NAME = "nats-token"  # noqa: S105  (a file name, not a secret)


def install_webhook_secret(data_dir: Path) -> tuple[str, Path]:
    """The signing secret kept in ``data_dir`` (made on first use, readable by its owner)."""
    return _kept_secret(data_dir / SECRET_FILE_NAME, new_webhook_secret)


def install_nats_token(data_dir: Path) -> tuple[str, Path]:
    """The token every client of the embedded NATS server must present: without it a program
    on this machine could publish forged jobs or read every request's events."""
    return _kept_secret(data_dir / NATS_TOKEN_FILE_NAME, lambda: secrets.token_urlsafe(32))


def _kept_secret(path: Path, make: Callable[[], str]) -> tuple[str, Path]:
    if path.exists():
        secret = path.read_text().strip()
        if secret:
            return secret, path
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = make()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret + "\n")
    return secret, path
