"""Nothing is lost when parts die: each fault mid-batch, then every guarantee checked.

Every test starts its own stack (and its own NATS or PostgreSQL where it breaks them), so
the machine's shared services stay up. ``make chaos`` runs these and prints a summary.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from pixpipe.dev.embedded_nats import free_port
from pixpipe.dev.local_postgres import postgres_binaries, throwaway_postgres
from pixpipe.dev.nats_cluster import nats_cluster
from pixpipe.v1 import status_pb2
from tests.support.faults import (
    FaultOutcome,
    check_nothing_lost,
    client_for,
    peak_memory_mb,
    submit,
    wait_for_progress,
)
from tests.support.infrastructure import NatsServer
from tests.support.stack import RunningStack, batch_csv, running_stack, stack_settings
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.slow

BATCH = int(os.environ.get("PIXPIPE_CHAOS_BATCH", "300"))
FAULT_SETTINGS = {"PIXPIPE_JOB_ACK_WAIT_SECONDS": "3", "PIXPIPE_JOB_MAX_DELIVER": "8",
                  "PIXPIPE_WEBHOOK_RETRY_SCHEDULE": "0.5,1,1,2,2,2,2,2",
                  "PIXPIPE_WEBHOOK_POLL_SECONDS": "0.2",
                  "PIXPIPE_NATS_REQUEST_TIMEOUT_SECONDS": "3"}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as running:
        yield running


@asynccontextmanager
async def fault_stack(tmp_path: Path, *, database_url: str, nats_url: str | None,
                      workers: int = 3, **extra: str) -> AsyncIterator[RunningStack]:
    environment = stack_settings(tmp_path / "stack", database_url=database_url,
                                 nats_url=nats_url or "", **FAULT_SETTINGS, **extra)
    if nats_url is None:
        del environment["PIXPIPE_NATS_URL"]
        environment["PIXPIPE_EMBEDDED_NATS_PORT"] = str(free_port())
    # Starting runs the migrations with asyncio.run, so it happens off this event loop.
    manager = running_stack(tmp_path / "stack", environment, workers=workers)
    stack = await asyncio.to_thread(manager.__enter__)
    try:
        if nats_url is None:
            stack.settings = stack.settings.updated(
                nats_url=f"nats://127.0.0.1:{stack.settings.nats.embedded_port}")
        yield stack
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)


Injector = Callable[[str], Awaitable[None]]


async def run_fault(name: str, stack: RunningStack, corpus_server, receiver, tmp_path: Path,
                    inject: Injector, chaos_report: list[FaultOutcome], *,
                    images: int = BATCH) -> None:
    """Submit a batch, inject the fault a quarter of the way in, then check everything."""
    started = time.monotonic()
    request_id = await submit(stack, batch_csv(corpus_server, images, tag="b"), tmp_path,
                              name="batch", webhook_url=receiver.url())
    await wait_for_progress(stack, request_id, images // 4)
    await inject(request_id)
    lost, duplicated = await check_nothing_lost(stack, request_id, images, receiver)
    chaos_report.append(FaultOutcome(name, images, time.monotonic() - started, lost,
                                     duplicated))


async def test_worker_killed_mid_batch(tmp_path, database_url, nats_server: NatsServer,
                                       corpus_server, receiver, chaos_report) -> None:
    async with fault_stack(tmp_path, database_url=database_url, nats_url=nats_server.url) as stack:
        async def inject(_request_id: str) -> None:
            stack.stack.kill("worker-2")
        await run_fault("worker SIGKILL (1 of 3)", stack, corpus_server, receiver, tmp_path,
                        inject, chaos_report)


async def test_nats_cluster_node_killed_then_restarted(tmp_path, database_url, corpus_server,
                                                       receiver, chaos_report) -> None:
    # As make cluster runs it: clients must present the cluster's token.
    with nats_cluster(tmp_path / "cluster", token="cluster-t0ken") as cluster:
        async with fault_stack(tmp_path, database_url=database_url, nats_url=cluster.url,
                               PIXPIPE_STREAM_REPLICAS="3",
                               PIXPIPE_NATS_TOKEN="cluster-t0ken") as stack:
            async def inject(request_id: str) -> None:
                cluster.nodes[0].kill()
                # The batch goes on with two of three nodes; then the third comes back.
                await wait_for_progress(stack, request_id, BATCH // 2)
                cluster.nodes[0].start()
            await run_fault("NATS node SIGKILL + restart (1 of 3)", stack, corpus_server,
                            receiver, tmp_path, inject, chaos_report)


async def test_embedded_nats_restarted_mid_batch(tmp_path, database_url, corpus_server,
                                                 receiver, chaos_report) -> None:
    async with fault_stack(tmp_path, database_url=database_url, nats_url=None) as stack:
        async def inject(_request_id: str) -> None:
            stack.stack.restart("nats")
        await run_fault("embedded NATS restart", stack, corpus_server, receiver, tmp_path,
                        inject, chaos_report)


@pytest.mark.skipif(postgres_binaries() is None, reason="PostgreSQL (initdb) not installed")
async def test_postgres_restarted_mid_batch(tmp_path, nats_server: NatsServer, corpus_server,
                                            receiver, chaos_report) -> None:
    with throwaway_postgres() as postgres:
        async with fault_stack(tmp_path, database_url=postgres.url,
                               nats_url=nats_server.url) as stack:
            async def inject(_request_id: str) -> None:
                await asyncio.to_thread(postgres.restart)
            await run_fault("PostgreSQL restart", stack, corpus_server, receiver, tmp_path,
                            inject, chaos_report)
            # Ingest reconnected by itself: a new upload after the restart goes through.
            again = await submit(stack, batch_csv(corpus_server, 10, tag="after"), tmp_path,
                                 name="after-restart")
            await check_nothing_lost(stack, again, 10, None)


async def test_notifier_restarted_while_watchers_are_connected(
        tmp_path, database_url, nats_server: NatsServer, corpus_server, receiver,
        chaos_report) -> None:
    async with fault_stack(tmp_path, database_url=database_url, nats_url=nats_server.url) as stack:
        started = time.monotonic()
        request_id = await submit(stack, batch_csv(corpus_server, BATCH, tag="watch"),
                                  tmp_path, name="watched", webhook_url=receiver.url())

        async def watch() -> list[status_pb2.WatchStatusResponse]:
            async with client_for(stack) as client:
                return [event async for event in client.watch(request_id, max_retries=100)]

        watchers = [asyncio.create_task(watch()) for _ in range(5)]
        await wait_for_progress(stack, request_id, BATCH // 4)
        stack.stack.kill("notifier")
        stack.stack.restart("notifier")
        streams = await asyncio.wait_for(asyncio.gather(*watchers), timeout=240)
        lost, duplicated = await check_nothing_lost(stack, request_id, BATCH, receiver)
        async with client_for(stack) as client:
            final = await client.get_status(request_id)
        truth = {image.image_id: image.status for image in final.images}
        for events in streams:
            assert events[-1].WhichOneof("event") == "completed"
            completed = events[-1].completed
            assert {image.image_id: image.status for image in completed.images} == truth
            assert any(event.WhichOneof("event") == "snapshot" for event in events[1:]), (
                "a reconnecting watcher resynchronises from a snapshot")
        chaos_report.append(FaultOutcome("notifier SIGKILL + restart, 5 watchers", BATCH,
                                         time.monotonic() - started, lost, duplicated))


async def test_twenty_concurrent_uploads(tmp_path, database_url, nats_server: NatsServer,
                                         corpus_server, receiver, chaos_report) -> None:
    uploads, per_upload = 20, int(os.environ.get("PIXPIPE_CHAOS_PER_UPLOAD", "100"))
    async with fault_stack(tmp_path, database_url=database_url, nats_url=nats_server.url) as stack:
        started = time.monotonic()
        request_ids = await asyncio.gather(*(
            submit(stack, batch_csv(corpus_server, per_upload, tag=f"u{n}"), tmp_path,
                   name=f"upload-{n}", webhook_url=receiver.url(f"/hook/{n}"))
            for n in range(uploads)))
        totals = [await check_nothing_lost(stack, request_id, per_upload, None)
                  for request_id in request_ids]
        await asyncio.to_thread(_wait_for_webhooks, receiver, uploads)
        ids = [post.headers["webhook-id"] for post in receiver.successes()]
        assert len(ids) == uploads and len(set(ids)) == uploads
        peaks = peak_memory_mb(stack)
        note = ", ".join(f"{name} {mb:.0f} MiB" for name, mb in sorted(peaks.items()))
        print(f"\npeak memory per process: {note}")
        chaos_report.append(FaultOutcome(
            f"{uploads} concurrent uploads", uploads * per_upload, time.monotonic() - started,
            sum(lost for lost, _ in totals), sum(dup for _, dup in totals),
            note=f"peak RSS {note}"))


def _wait_for_webhooks(receiver: WebhookReceiver, count: int, seconds: float = 60) -> None:
    with receiver.received:
        assert receiver.received.wait_for(lambda: len(receiver.successes()) >= count,
                                          timeout=seconds)
