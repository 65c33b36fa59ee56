"""``make run``'s command: clear refusals for taken ports, its own free port for the embedded
NATS, and restarts of crashed parts with backoff."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pixpipe.dev.embedded_nats import (
    free_port,
    start_nats_server,
    start_nats_server_on_free_port,
    wait_for_port,
)
from pixpipe.dev.stack import RestartBackoff, Stack, Supervisor, occupied_ports
from pixpipe.settings import Settings

DEFAULT_NATS_PORT = 4222


@pytest.fixture
def default_nats_port_taken() -> Iterator[None]:
    """127.0.0.1:4222 held by another program: the machine's NATS server, else a listener."""
    with socket.socket() as holder:
        try:
            holder.bind(("127.0.0.1", DEFAULT_NATS_PORT))
            holder.listen()
        except OSError:
            pass  # already taken, as on a developer machine running NATS for something else
        wait_for_port("127.0.0.1", DEFAULT_NATS_PORT, timeout=2)
        yield


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
    external = settings.updated(nats_url="nats://127.0.0.1:4222")
    assert occupied_ports(external) == []


def run_stack_command(tmp_path: Path, **ports: int) -> subprocess.CompletedProcess[str]:
    """``make run``'s command on free ports but ``ports`` (e.g. GATEWAY_PORT=...)."""
    chosen = {name: free_port() for name in (
        "GATEWAY_PORT", "EMBEDDED_NATS_PORT", "INGEST_PORT", "STATUS_PORT")} | ports
    environment = {**os.environ, "PIXPIPE_DATA_DIR": str(tmp_path),
                   **{f"PIXPIPE_{name}": str(port) for name, port in chosen.items()}}
    environment.pop("PIXPIPE_NATS_URL", None)
    return subprocess.run([sys.executable, "-m", "pixpipe.dev.stack"], env=environment,
                          capture_output=True, text=True, timeout=120, check=False)


def test_stack_command_refuses_a_taken_port_without_a_traceback(
        listener: int, tmp_path: Path) -> None:
    result = run_stack_command(tmp_path, GATEWAY_PORT=listener)

    assert result.returncode == 2
    assert f"127.0.0.1:{listener} (PIXPIPE_GATEWAY_PORT)" in result.stderr
    assert "already running" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "jetstream").exists()  # nothing was started


def test_an_unset_embedded_nats_port_is_never_reported_taken(
        default_nats_port_taken: None, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, ingest_port=free_port(), status_port=free_port(),
                        gateway_port=free_port())

    assert occupied_ports(settings) == []


def test_stack_command_refuses_a_taken_embedded_nats_port_that_was_asked_for(
        listener: int, tmp_path: Path) -> None:
    result = run_stack_command(tmp_path, EMBEDDED_NATS_PORT=listener)

    assert result.returncode == 2
    assert f"already in use: 127.0.0.1:{listener} (PIXPIPE_EMBEDDED_NATS_PORT)" in result.stderr


def test_the_embedded_nats_takes_a_free_port_and_keeps_it_across_a_restart(
        default_nats_port_taken: None, tmp_path: Path) -> None:
    process, port = start_nats_server_on_free_port(store_dir=tmp_path / "jetstream")
    try:
        assert port != DEFAULT_NATS_PORT
        process.kill()
        process.wait()
        process = start_nats_server(port=port, store_dir=tmp_path / "jetstream")
        wait_for_port("127.0.0.1", port, timeout=1)
    finally:
        process.kill()
        process.wait()


def test_a_fixed_port_held_by_another_server_fails_the_start(
        listener: int, tmp_path: Path) -> None:
    # Something answers on the port, but it is not the server just started.
    with pytest.raises(RuntimeError, match="exited with code 1 before listening"):
        start_nats_server(port=listener, store_dir=tmp_path / "jetstream")


def test_restart_backoff_doubles_up_to_its_cap() -> None:
    backoff = RestartBackoff(first=0.5, cap=30.0)

    assert [backoff.delay(crashes) for crashes in range(1, 9)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


class Clock:
    """A clock the test moves forward."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_supervisor_restarts_a_crashing_service_with_backoff_reset_after_a_stable_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    stack = Stack(settings=Settings(data_dir=tmp_path), log_dir=tmp_path / "logs", clock=clock)
    supervisor = Supervisor(stack, RestartBackoff(first=1.0, cap=4.0, stable_after=60.0))
    # A "service" that exits as soon as it starts: a module with no entry point.
    repository = str(Path(__file__).resolve().parents[2])
    stack._spawn("crasher", "tests.support.child_calls", {**os.environ, "PYTHONPATH": repository})

    def crashes_then_restarts_after(delay: float) -> str:
        stack.processes["crasher"].wait(timeout=30)
        supervisor.check()
        crashed = stack.processes["crasher"].pid
        clock.now += delay - 0.5
        supervisor.check()
        assert stack.processes["crasher"].pid == crashed, "restarted before its delay"
        clock.now += 0.5
        supervisor.check()
        assert stack.processes["crasher"].pid != crashed, "not restarted after its delay"
        return capsys.readouterr().err

    try:
        reports = [crashes_then_restarts_after(delay) for delay in (1.0, 2.0, 4.0, 4.0)]
        clock.now += 60.0  # this run counts as stable: the next crash starts the count again
        after_a_stable_run = crashes_then_restarts_after(1.0)
    finally:
        stack.stop()

    assert "crasher exited with code 0 after 0.0 s; restarting it in 1.0 s" in reports[0]
    assert "restarting it in 4.0 s (4 crashes in a row)" in reports[3]
    assert "crasher restarted (pid" in reports[3]
    assert "restarting it in 1.0 s\n" in after_a_stable_run


def test_services_stop_when_the_stack_process_dies_without_cleaning_up() -> None:
    """A stack killed outright (or a test runner crashing past its clean-up) leaves no
    services behind to pull jobs from a shared queue."""
    # A stand-in service: it ties itself to the stack as the services' mains do, then waits.
    service = ("import os, sys, time\n"
               "from pixpipe.runtime import exit_with_parent\n"
               "exit_with_parent(int(sys.argv[1]))\n"
               "time.sleep(120)\n")
    script = (
        "import subprocess, sys, os\n"
        f"child = subprocess.Popen([sys.executable, '-c', {service!r}, str(os.getpid())],\n"
        "                         start_new_session=True, stdout=subprocess.DEVNULL)\n"
        "print(child.pid, flush=True)\n"
        "os._exit(0)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=True)
    orphan = int(result.stdout.strip())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{orphan}").exists() and "Z" not in _state(orphan):
        assert time.monotonic() < deadline, "the service outlived its stack"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
