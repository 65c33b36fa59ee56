"""``make run``'s command refuses to start, clearly, when a port it needs is taken."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pixpipe.embedded_nats import free_port
from pixpipe.settings import Settings
from pixpipe.stack import occupied_ports


@pytest.fixture
def listener() -> Iterator[int]:
    """A port some other program is listening on."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield int(held.getsockname()[1])


def test_only_the_ports_in_use_are_reported(listener: int, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, embedded_nats_port=listener,
                        ingest_port=free_port(), status_port=free_port(),
                        gateway_port=free_port())

    assert occupied_ports(settings) == [f"127.0.0.1:{listener} (PIXPIPE_EMBEDDED_NATS_PORT)"]
    # With an external broker the embedded one's port does not matter.
    external = settings.model_copy(update={"nats_url": "nats://127.0.0.1:4222"})
    assert occupied_ports(external) == []


def test_stack_command_refuses_a_taken_port_without_a_traceback(
        listener: int, tmp_path: Path) -> None:
    environment = {**os.environ, "PIXPIPE_DATA_DIR": str(tmp_path),
                   "PIXPIPE_GATEWAY_PORT": str(listener),
                   "PIXPIPE_EMBEDDED_NATS_PORT": str(free_port()),
                   "PIXPIPE_INGEST_PORT": str(free_port()),
                   "PIXPIPE_STATUS_PORT": str(free_port())}
    environment.pop("PIXPIPE_NATS_URL", None)
    result = subprocess.run([sys.executable, "-m", "pixpipe.stack"], env=environment,
                            capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == 2
    assert f"127.0.0.1:{listener} (PIXPIPE_GATEWAY_PORT)" in result.stderr
    assert "already running" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "jetstream").exists()  # nothing was started
