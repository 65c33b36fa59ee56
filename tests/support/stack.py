"""Runs the whole pixpipe stack for end-to-end tests and talks to it like a user would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from pixpipe.client.uploads import byte_chunks, upload_requests
from pixpipe.dev.embedded_nats import free_port
from pixpipe.dev.stack import Stack
from pixpipe.dev.webhook_secret import new_webhook_secret
from pixpipe.settings import Settings
from pixpipe.v1 import ingest_pb2, ingest_pb2_grpc, status_pb2, status_pb2_grpc
from tests.support.http_server import CorpusHttpServer

TERMINAL_STATES = (status_pb2.REQUEST_STATE_COMPLETED, status_pb2.REQUEST_STATE_FAILED)


@dataclass
class RunningStack:
    settings: Settings
    stack: Stack
    log_dir: Path

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.network.gateway_port}"

    @property
    def ingest_address(self) -> str:
        return f"127.0.0.1:{self.settings.network.ingest_port}"

    @property
    def status_address(self) -> str:
        return f"127.0.0.1:{self.settings.network.status_port}"

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
                         for path in sorted(self.log_dir.glob("*.log")))


def stack_settings(data_dir: Path, *, database_url: str, nats_url: str,
                   **overrides: str) -> dict[str, str]:
    """PIXPIPE_* variables for a stack on free ports that may fetch from loopback."""
    return {
        "PIXPIPE_DATA_DIR": str(data_dir),
        "PIXPIPE_DATABASE_URL": database_url,
        "PIXPIPE_NATS_URL": nats_url,
        "PIXPIPE_ALLOW_PRIVATE_NETWORKS": "true",
        "PIXPIPE_GATEWAY_PORT": str(free_port()),
        "PIXPIPE_INGEST_PORT": str(free_port()),
        "PIXPIPE_STATUS_PORT": str(free_port()),
        "PIXPIPE_WORKER_CONCURRENCY": "4",
        "PIXPIPE_CODEC_PROCESSES": "1",
        "PIXPIPE_JOB_ACK_WAIT_SECONDS": "10",
        "PIXPIPE_JOB_RETRY_BACKOFF_SECONDS": "[0.2, 0.5, 1]",
        "PIXPIPE_SHUTDOWN_GRACE_SECONDS": "5",
        "PIXPIPE_GRPC_DRAIN_SECONDS": "0.2",
        "PIXPIPE_LOG_LEVEL": "INFO",
        "PIXPIPE_WEBHOOK_SECRET": new_webhook_secret(),
        **overrides,
    }


@contextmanager
def running_stack(data_dir: Path, environment: dict[str, str], *,
                  workers: int = 2) -> Iterator[RunningStack]:
    settings = Settings.from_variables(environment)
    log_dir = data_dir / "logs"
    stack = Stack(settings=settings, workers=workers, log_dir=log_dir, environment=environment)
    stack.start()
    try:
        yield RunningStack(settings=settings, stack=stack, log_dir=log_dir)
    finally:
        stack.stop()


@contextmanager
def stack_in(tmp_path_factory: pytest.TempPathFactory, name: str, *, database_url: str,
             nats_url: str, workers: int = 2, **overrides: str) -> Iterator[RunningStack]:
    """A module's stack in a fresh directory of its own, on the session's database and NATS."""
    data_dir = tmp_path_factory.mktemp(name)
    environment = stack_settings(data_dir, database_url=database_url, nats_url=nats_url,
                                 **overrides)
    with running_stack(data_dir, environment, workers=workers) as running:
        yield running


def upload_messages(csv_bytes: bytes, *, chunk_size: int = 1024, file_name: str = "products.csv",
                    webhook_url: str = "", options: object | None = None,
                    ) -> Iterator[ingest_pb2.UploadRequest]:
    metadata = ingest_pb2.UploadMetadata(file_name=file_name, webhook_url=webhook_url)
    if options is not None:
        metadata.options.CopyFrom(options)  # type: ignore[arg-type]
    yield from upload_requests(metadata, byte_chunks(csv_bytes, chunk_size))


async def upload(address: str, csv_bytes: bytes, **kwargs: object) -> ingest_pb2.UploadResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        response: ingest_pb2.UploadResponse = await stub.Upload(
            upload_messages(csv_bytes, **kwargs), timeout=60)  # type: ignore[arg-type]
        return response


async def get_status(address: str, request_id: str) -> status_pb2.RequestStatus:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        response: status_pb2.GetStatusResponse = await stub.GetStatus(
            status_pb2.GetStatusRequest(request_id=request_id), timeout=10)
        return response.status


async def wait_until_terminal(address: str, request_id: str, *,
                              timeout: float = 120.0,  # noqa: ASYNC109
                              ) -> status_pb2.RequestStatus:
    """Poll GetStatus until the request is terminal (a wait for a condition, not a sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        status = await get_status(address, request_id)
        if status.status in TERMINAL_STATES:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"request {request_id} not terminal after {timeout} s: "
                               f"{status.completed}+{status.failed}/{status.total}")
        await asyncio.sleep(0.1)


def products_csv(corpus_dir: Path, port: int) -> bytes:
    return (corpus_dir / "products.csv").read_bytes().replace(b"PORT", str(port).encode())


WatchCall = grpc.aio.UnaryStreamCall[status_pb2.WatchStatusRequest,
                                     status_pb2.WatchStatusResponse]


async def read_event(call: WatchCall) -> status_pb2.WatchStatusResponse:
    """The next event of a watch stream (grpc-stubs types read() too loosely)."""
    event = await call.read()
    assert isinstance(event, status_pb2.WatchStatusResponse), "the stream ended"
    return event


async def read_rest(call: WatchCall) -> list[status_pb2.WatchStatusResponse]:
    events = []
    while isinstance(event := await call.read(), status_pb2.WatchStatusResponse):
        events.append(event)
    return events


PHOTOS = ["rocket.jpg", "coffee.png", "chelsea.png", "camera.png", "logo.png",
          "astronaut.png", "hubble_deep_field.jpg", "retina.jpg"]


def batch_csv(server: CorpusHttpServer, images: int, *, tag: str, per_product: int = 5,
              ) -> bytes:
    rows = []
    for serial in range(1, images // per_product + 1):
        urls = ",".join(
            server.url(f"photos/{PHOTOS[(serial * per_product + k) % len(PHOTOS)]}"
                       f"?{tag}={serial}.{k}") for k in range(per_product))
        rows.append(f'{serial},Product {serial},"{urls}"')
    return ("S. No.,Product Name,Input Image Urls\n" + "\n".join(rows) + "\n").encode()
