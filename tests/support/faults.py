"""Checks shared by the fault tests: nothing lost, nothing duplicated, one completion."""

from __future__ import annotations

import asyncio
import resource
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy
from sqlalchemy import func, select

from pixpipe.bus import EVENTS_STREAM, events_subject
from pixpipe.client import PixpipeClient, ServerAddresses
from pixpipe.db.engine import create_engine, session_factory
from pixpipe.db.models import ImageRecord
from pixpipe.v1 import status_pb2
from tests.support.stack import RunningStack
from tests.support.webhook_receiver import WebhookReceiver

TERMINAL = (status_pb2.REQUEST_STATE_COMPLETED, status_pb2.REQUEST_STATE_FAILED)


@dataclass
class FaultOutcome:
    fault: str
    images: int
    seconds: float
    lost: int
    duplicated: int
    note: str = ""


def client_for(stack: RunningStack) -> PixpipeClient:
    return PixpipeClient(ServerAddresses(ingest=stack.ingest_address,
                                         status=stack.status_address))


async def submit(stack: RunningStack, csv_bytes: bytes, tmp_dir: Path, *, name: str,
                 webhook_url: str = "") -> str:
    path = tmp_dir / f"{name}.csv"
    path.write_bytes(csv_bytes)
    async with client_for(stack) as client:
        answer = await client.upload(path, webhook_url=webhook_url)
    return answer.request_id


async def wait_for_progress(stack: RunningStack, request_id: str, done: int,
                            seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    async with client_for(stack) as client:
        while True:
            status = await client.get_status(request_id, summary_only=True)
            if status.completed + status.failed >= done or status.status in TERMINAL:
                return
            assert time.monotonic() < deadline, f"no progress: {status.completed}"
            await asyncio.sleep(0.05)


async def wait_for_terminal(stack: RunningStack, request_id: str,
                            seconds: float = 240.0) -> status_pb2.RequestStatus:
    """Poll through outages: a status call failing while a part restarts is retried."""
    deadline = time.monotonic() + seconds
    last_error: Exception | None = None  # services restart mid-fault; say why if none came back
    while True:
        try:
            async with client_for(stack) as client:
                status = await client.get_status(request_id)
            if status.status in TERMINAL:
                return status
        except Exception as error:
            last_error = error
        assert time.monotonic() < deadline, (
            f"request {request_id} never finished (last error: {last_error!r})")
        await asyncio.sleep(0.2)


async def completion_events(nats_url: str, request_id: str, seconds: float = 60.0, *,
                            token: str | None = None) -> int:
    """How many completion events the events stream holds for the request, once it has one.

    The guarantee is "eventually exactly one": a worker whose publish fails during a fault
    retries with backoff, and the notifier's sweeper publishes what is left, so the event can
    land seconds after the request is terminal. Waits for it (up to ``seconds``), and retries
    reads too: right after a fault a replicated stream may still be electing its leader.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            count = await _count_completion_events(nats_url, request_id, token)
            if count or time.monotonic() > deadline:
                return count
        except Exception:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


async def _count_completion_events(nats_url: str, request_id: str, token: str | None) -> int:
    client = await nats.connect(nats_url.split(","), token=token)
    try:
        js = client.jetstream(timeout=15)
        subject = events_subject(request_id)
        info = await js.stream_info(EVENTS_STREAM, subjects_filter=subject)
        total = (info.state.subjects or {}).get(subject, 0)
        subscription = await js.pull_subscribe(
            subject, stream=EVENTS_STREAM,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
        kinds: Counter[str] = Counter()
        fetched = 0
        while fetched < total:
            for message in await subscription.fetch(min(256, total - fetched), timeout=5):
                event = status_pb2.WatchStatusResponse()
                event.ParseFromString(message.data)
                kinds[event.WhichOneof("event") or ""] += 1
                fetched += 1
                await message.ack()
        await subscription.unsubscribe()
        return kinds["completed"]
    finally:
        await client.close()


async def check_nothing_lost(stack: RunningStack, request_id: str, expected_total: int,
                             receiver: WebhookReceiver | None) -> tuple[int, int]:
    """Assert the guarantees of DESIGN §3/§4 for one request; returns (lost, duplicated)."""
    status = await wait_for_terminal(stack, request_id)
    lost = sum(1 for image in status.images if image.status not in (
        status_pb2.IMAGE_STATE_COMPLETED, status_pb2.IMAGE_STATE_FAILED))
    assert status.total == expected_total and len(status.images) == expected_total
    assert status.completed + status.failed == expected_total
    for image in status.images:
        if image.status == status_pb2.IMAGE_STATE_FAILED:
            assert image.error, f"image {image.image_id} failed without a reason"

    engine = create_engine(stack.settings.storage.resolved_database_url)
    try:
        async with session_factory(engine)() as session:
            rows = await session.scalar(select(func.count()).select_from(ImageRecord).where(
                ImageRecord.request_id == request_id))
    finally:
        await engine.dispose()
    files = list((stack.settings.storage.images_dir / request_id).glob("*.*"))
    per_image = Counter(path.stem for path in files)
    duplicated = (int(rows or 0) - expected_total) + sum(n - 1 for n in per_image.values())
    completed_ids = {image.image_id for image in status.images
                     if image.status == status_pb2.IMAGE_STATE_COMPLETED}
    strays = sorted(path.name for path in files if path.stem not in completed_ids)
    missing = sorted(completed_ids - set(per_image))
    assert len(files) == status.completed, (
        f"one file per completed image, no strays: {strays[:5]} not completed, "
        f"{missing[:5]} without a file")

    completions = await completion_events(stack.stack.nats_url, request_id,
                                          token=stack.settings.nats.token or stack.stack.nats_token)
    duplicated += max(0, completions - 1)
    assert completions == 1, f"{completions} completion events"
    if receiver is not None:
        await asyncio.to_thread(receiver.wait_for_success, 60.0)
        ids = Counter(post.headers["webhook-id"] for post in receiver.successes())
        assert len(ids) >= 1 and all(count == 1 for count in ids.values()), ids
        duplicated += sum(count - 1 for count in ids.values())
    assert lost == 0 and duplicated == 0
    return lost, duplicated


def peak_memory_mb(stack: RunningStack) -> dict[str, float]:
    """Peak resident memory (VmHWM) of every process of the stack, in MiB."""
    peaks: dict[str, float] = {}
    for name, process in stack.stack.processes.items():
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks[name] = int(line.split()[1]) / 1024
    peaks["test runner"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return peaks
