"""``make run`` as a user runs it: beside a NATS server that already holds 4222, ready when it
says so, and still serving after a worker or its embedded NATS is SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import pytest

from pixpipe.dev.embedded_nats import free_port
from pixpipe.dev.webhook_secret import NATS_TOKEN_FILE_NAME
from tests.support.http_server import CorpusHttpServer
from tests.support.stack import batch_csv, products_csv

REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_NATS_PORT = 4222
MAKE_RUN_SETTINGS = {
    "PIXPIPE_ALLOW_PRIVATE_NETWORKS": "true",
    "PIXPIPE_WORKER_CONCURRENCY": "4",
    "PIXPIPE_CODEC_PROCESSES": "1",
    # A killed worker's jobs come back after 3 s rather than 30.
    "PIXPIPE_JOB_ACK_WAIT_SECONDS": "3",
    "PIXPIPE_JOB_MAX_DELIVER": "8",
    "PIXPIPE_JOB_RETRY_BACKOFF_SECONDS": "0.2,0.5,1",
    "PIXPIPE_SHUTDOWN_GRACE_SECONDS": "5",
    "PIXPIPE_GRPC_DRAIN_SECONDS": "0.2",
}


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll ``condition`` until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s"
        time.sleep(0.1)
    return result


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children of each of its threads, recursively)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        with suppress(OSError):
            for child in map(int, (task / "children").read_text().split()):
                found += [child, *descendants(child)]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def command_line(pid: int) -> str:
    with suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    return ""


@dataclass
class MakeRun:
    process: subprocess.Popen[bytes]
    log: Path
    data_dir: Path
    gateway_url: str
    seen: set[int] = field(default_factory=set)  # every process of the stack noticed

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            assert self.process.poll() is None, f"make run exited:\n{self.output()[-3000:]}"
            return re.search(pattern, self.output())
        match: re.Match[str] = wait_until(found, f"make run printing {pattern!r}", timeout)
        return match

    def processes(self, marker: str) -> list[int]:
        """Live processes of the stack whose command line contains ``marker``."""
        pids = descendants(self.process.pid)
        self.seen.update(pids)
        return [pid for pid in pids if marker in command_line(pid) and alive(pid)]


def make_environment(data_dir: Path) -> dict[str, str]:
    """No PIXPIPE_* from the caller's shell: the embedded NATS port in particular stays unset."""
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("PIXPIPE_", "MAKE", "MFLAGS"))}
    return {**environment, **MAKE_RUN_SETTINGS, "PIXPIPE_DATA_DIR": str(data_dir),
            "PIXPIPE_GATEWAY_PORT": str(free_port()), "PIXPIPE_INGEST_PORT": str(free_port()),
            "PIXPIPE_STATUS_PORT": str(free_port())}


@contextmanager
def make_run(tmp_path: Path) -> Iterator[MakeRun]:
    """``make run`` in a process group of its own; stopped with Ctrl-C's SIGINT, and every
    process it started is gone afterwards."""
    data_dir = tmp_path / "data"
    environment = make_environment(data_dir)
    log = tmp_path / "make-run.log"
    with log.open("wb") as output:
        # -o: never reinstall the shared virtualenv from a test, even if pyproject.toml changed.
        process = subprocess.Popen(["make", "-C", str(REPOSITORY), "-o", ".venv/.installed",
                                    "run"], env=environment, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    running = MakeRun(process, log, data_dir,
                      f"http://127.0.0.1:{environment['PIXPIPE_GATEWAY_PORT']}")
    try:
        yield running
    finally:
        running.processes("")
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=45)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # The services run in sessions of their own: whatever outlived the stack goes now.
        leftovers = [pid for pid in running.seen if alive(pid)]
        for pid in leftovers:
            with suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        assert not leftovers, f"processes outlived make run: {leftovers}\n{running.output()}"
        assert "stopped." in running.output()


@pytest.fixture
def default_nats_port_taken() -> Iterator[None]:
    """127.0.0.1:4222 held by another program: the machine's NATS server, else a listener."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("127.0.0.1", DEFAULT_NATS_PORT))
            holder.listen()
        except OSError:
            pass  # already taken, as on a developer machine running NATS for something else
        with socket.create_connection(("127.0.0.1", DEFAULT_NATS_PORT), timeout=2):
            pass
        yield


def upload(gateway_url: str, csv_bytes: bytes) -> httpx.Response:
    return httpx.post(f"{gateway_url}/upload/", timeout=30,
                      files={"file": ("products.csv", csv_bytes, "text/csv")})


def status(gateway_url: str, request_id: str, *, images: int = 1000) -> dict[str, Any]:
    response = httpx.get(f"{gateway_url}/status/{request_id}", params={"limit": images},
                         timeout=10)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def wait_terminal(gateway_url: str, request_id: str, timeout: float = 60.0) -> dict[str, Any]:
    wait_until(lambda: status(gateway_url, request_id, images=1)["status"] in (
        "completed", "failed"), f"request {request_id} finishing", timeout)
    return status(gateway_url, request_id)


async def nats_answers(url: str, *, token: str | None) -> str:
    try:
        client = await nats.connect(url, token=token, allow_reconnect=False,
                                    max_reconnect_attempts=0, connect_timeout=5)
    except (nats.errors.Error, OSError):
        return "refused"
    await client.close()
    return "connected"


def readyz(gateway_url: str) -> httpx.Response | None:
    try:
        return httpx.get(f"{gateway_url}/readyz", timeout=5)
    except httpx.TransportError:
        return None


def test_make_run_beside_a_nats_on_4222_takes_an_upload_the_moment_it_is_ready(
        tmp_path: Path, default_nats_port_taken: None,
        corpus_server: CorpusHttpServer, corpus_dir: Path) -> None:
    csv_bytes = products_csv(corpus_dir, corpus_server.port)
    with make_run(tmp_path) as running:
        not_ready: list[dict[str, Any]] = []

        def first_ready() -> bool:
            answer = readyz(running.gateway_url)
            if answer is not None and answer.status_code == 503:
                not_ready.append(answer.json())
            assert running.process.poll() is None, running.output()
            return answer is not None and answer.status_code == 200

        wait_until(first_ready, "/readyz answering 200", timeout=60)
        accepted = upload(running.gateway_url, csv_bytes)

        assert accepted.status_code == 200, accepted.text
        assert all(body["status"] == "not ready" and body["not_ready"] for body in not_ready)
        banner = running.wait_for_output(r"pixpipe is running:[\s\S]*NATS +nats://127\.0\.0\.1:(\d+)")
        assert int(banner.group(1)) != DEFAULT_NATS_PORT
        # The embedded NATS wants this install's token: no other program can forge jobs.
        token = (running.data_dir / NATS_TOKEN_FILE_NAME).read_text().strip()
        nats_url = f"nats://127.0.0.1:{banner.group(1)}"
        assert asyncio.run(nats_answers(nats_url, token=None)) == "refused"
        assert asyncio.run(nats_answers(nats_url, token=token)) == "connected"
        # No well-known webhook secret: this install's own, printed and kept in the data dir.
        secret = running.wait_for_output(r"webhook secret (whsec_\S+)  \(kept in (\S+)\)")
        kept = Path(secret.group(2))
        assert kept.parent == running.data_dir and kept.read_text().strip() == secret.group(1)
        assert kept.stat().st_mode & 0o077 == 0
        done = wait_terminal(running.gateway_url, accepted.json()["request_id"])
        assert done["status"] == "completed"
        assert done["total"] == accepted.json()["image_count"] == len(done["images"])
        assert done["completed"] + done["failed"] == done["total"]


def test_a_worker_killed_mid_request_is_restarted_and_every_image_is_done_once(
        tmp_path: Path, default_nats_port_taken: None,
        corpus_server: CorpusHttpServer) -> None:
    images = 300
    with make_run(tmp_path) as running:
        running.wait_for_output("pixpipe is running")
        workers = running.processes("pixpipe_services.worker.main")
        assert len(workers) == 2
        fetches_before = len(corpus_server.requests)
        accepted = upload(running.gateway_url,
                          batch_csv(corpus_server, images, tag=f"kill{time.time_ns()}"))
        assert accepted.status_code == 200, accepted.text
        request_id = accepted.json()["request_id"]
        wait_until(lambda: status(running.gateway_url, request_id, images=1)["completed"]
                   >= images // 10,
                   "a tenth of the request done")
        victim = workers[0]
        # Its fork server and codec processes: orphans once it dies, which must leave quietly.
        victim_children = descendants(victim)
        assert victim_children, "the worker runs its codec in child processes"
        # Checked just before the kill, not after the restart: a warm machine may finish the
        # rest of the request while the stack notices the death and restarts the worker.
        assert status(running.gateway_url, request_id, images=1)["status"] == "processing", (
            "the request finished before the kill: nothing left to test")

        os.kill(victim, signal.SIGKILL)

        crash = running.wait_for_output(r"(worker-\d) exited with code -9 \(SIGKILL\)")
        running.wait_for_output(rf"{crash.group(1)} restarted \(pid \d+\)")
        wait_until(lambda: not any(alive(pid) for pid in victim_children),
                   "the killed worker's children exiting", timeout=10)
        done = wait_terminal(running.gateway_url, request_id)

        assert done["total"] == images == done["completed"] + done["failed"]
        assert done["failed"] == 0, [image["error"] for image in done["images"] if image["error"]]
        assert len({(image["serial_number"], image["input_url"])
                    for image in done["images"]}) == images
        with sqlite3.connect(running.data_dir / "pixpipe.db") as database:
            rows = database.execute("SELECT status, attempts, worker FROM images "
                                    "WHERE request_id = ?", (request_id,)).fetchall()
        assert len(rows) == images and {state for state, _, _ in rows} == {"completed"}
        # Jobs in the killed worker's hands were delivered again (their sources fetched a
        # second time; an image is marked processing only once downloaded, so attempts alone
        # do not show it) and finished by another worker.
        assert len(corpus_server.requests) - fetches_before > images
        assert all(not worker.endswith(f":{victim}") for _, attempts, worker in rows
                   if attempts >= 2)
        outputs = list((running.data_dir / "processed_images" / request_id).iterdir())
        assert len(outputs) == images, "one output file per image and no half-written ones"
        assert len(running.processes("pixpipe_services.worker.main")) == 2
        assert "Traceback" not in running.output()
        assert "stopping" not in running.output()


def test_a_killed_embedded_nats_is_restarted_on_its_port_with_its_store(
        tmp_path: Path, default_nats_port_taken: None,
        corpus_server: CorpusHttpServer, corpus_dir: Path) -> None:
    csv_bytes = products_csv(corpus_dir, corpus_server.port)
    with make_run(tmp_path) as running:
        port = int(running.wait_for_output(
            r"pixpipe is running:[\s\S]*NATS +nats://127\.0\.0\.1:(\d+)").group(1))
        before = upload(running.gateway_url, csv_bytes).json()["request_id"]
        wait_terminal(running.gateway_url, before)
        [nats] = running.processes("nats-server")

        os.kill(nats, signal.SIGKILL)

        running.wait_for_output(r"nats restarted \(pid \d+\)")
        [restarted] = running.processes("nats-server")
        arguments = command_line(restarted).split()
        # The same port and store directory: the services reconnect and the streams remain.
        assert arguments[arguments.index("-p") + 1] == str(port)
        assert arguments[arguments.index("-sd") + 1] == str(running.data_dir / "jetstream")
        wait_until(lambda: (answer := readyz(running.gateway_url)) is not None
                   and answer.status_code == 200, "ready again")
        after = upload(running.gateway_url, csv_bytes)
        assert after.status_code == 200, after.text
        assert wait_terminal(running.gateway_url, after.json()["request_id"])["status"] == (
            "completed")
