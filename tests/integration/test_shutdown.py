"""Graceful shutdown: a SIGTERMed worker settles its jobs; gRPC servers drain first."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pixpipe.auth import Authenticator
from pixpipe.bus import Bus
from pixpipe.db.repository import Repository
from pixpipe.dev.embedded_nats import free_port
from pixpipe.domain import ImageState
from pixpipe.grpc_server import GrpcServer
from pixpipe.settings import Settings
from tests.integration.conftest import running_worker
from tests.integration.test_worker import attempts_of, submit, wait_terminal
from tests.support.http_server import CorpusHttpServer


def worker_environment(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ,
            "PIXPIPE_DATA_DIR": str(settings.storage.data_dir),
            "PIXPIPE_DATABASE_URL": settings.storage.resolved_database_url,
            "PIXPIPE_NATS_URL": settings.nats.url or "",
            "PIXPIPE_ALLOW_PRIVATE_NETWORKS": "true", "PIXPIPE_CODEC_PROCESSES": "1",
            "PIXPIPE_JOB_ACK_WAIT_SECONDS": "30", **extra}


def trickling(photo: bytes, seconds: float) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        step = len(photo) // 10 + 1
        for start in range(0, len(photo), step):
            time.sleep(seconds / 10)
            yield photo[start:start + step]
    return chunks


async def sigterm_mid_download(environment: dict[str, str], server: CorpusHttpServer,
                               path: str, jobs: int, submit_jobs: Awaitable[str],
                               ) -> tuple[str, int]:
    """Start a worker process, submit, SIGTERM it once it fetches every job; returns the
    request id and the worker's exit code (the worker never outlives the call)."""
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pixpipe_services.worker.main", env=environment,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        request_id = await submit_jobs
        await wait_for_fetches(server, path, jobs)
        worker.send_signal(signal.SIGTERM)
        return request_id, await asyncio.wait_for(worker.wait(), timeout=30)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()


async def wait_for_fetches(server: CorpusHttpServer, path: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while sum(1 for r in server.requests if r.path == path) < count:
        assert time.monotonic() < deadline, "the worker never started the jobs"
        await asyncio.sleep(0.05)


async def test_sigterm_finishes_the_jobs_in_hand_and_exits_0(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus,
        http_server: CorpusHttpServer, corpus_dir: Path) -> None:
    photo = (corpus_dir / "photos" / "rocket.jpg").read_bytes()
    http_server.stream("/two-seconds.jpg", trickling(photo, 2.0))
    settings = make_settings()
    request_id, code = await sigterm_mid_download(
        worker_environment(settings, PIXPIPE_SHUTDOWN_GRACE_SECONDS="20"), http_server,
        "/two-seconds.jpg", 3,
        submit(repository, bus, [http_server.url(f"/two-seconds.jpg?n={n}") for n in range(3)]))
    assert code == 0
    view = await repository.get_request(request_id)
    assert view is not None
    assert [image.status for image in view.images] == [ImageState.COMPLETED] * 3
    for image in view.images:
        assert await attempts_of(repository, image.image_id) == 1


async def test_jobs_outlasting_the_grace_period_are_handed_back_at_once(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus,
        http_server: CorpusHttpServer, corpus_dir: Path) -> None:
    photo = (corpus_dir / "photos" / "rocket.jpg").read_bytes()
    http_server.stream("/four-seconds.jpg", trickling(photo, 4.0))
    settings = make_settings()
    request_id, code = await sigterm_mid_download(
        worker_environment(settings, PIXPIPE_SHUTDOWN_GRACE_SECONDS="0.5"), http_server,
        "/four-seconds.jpg", 1, submit(repository, bus, [http_server.url("/four-seconds.jpg")]))
    assert code == 0
    # The job was nak'ed, not left to its 30 s ack wait: another worker takes it right away.
    started = time.monotonic()
    async with running_worker(settings):
        view = await wait_terminal(repository, request_id, seconds=20)
    assert time.monotonic() - started < 15
    assert view.images[0].status == ImageState.COMPLETED
    assert await attempts_of(repository, view.images[0].image_id) == 2


async def test_a_stopping_grpc_server_reports_not_serving_while_it_drains() -> None:
    server = GrpcServer(host="127.0.0.1", port=free_port(), authenticator=Authenticator.open())
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert serving.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(server.stop(1.0, drain_seconds=1.0))
        deadline = time.monotonic() + 5
        while True:
            answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            if answer.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await stopping
        assert stopping.done()
