"""WatchStatus under load: batched bursts, shared snapshot reads, cheap quiet streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from pixpipe.bus import Bus
from pixpipe.client.connection import unbatched
from pixpipe.csv_input import parse_products_csv
from pixpipe.db.repository import Repository
from pixpipe.domain import ImageChange, ImageSuccess, RequestOptions
from pixpipe.events import EventPublisher
from pixpipe.settings import Settings
from pixpipe.v1 import status_pb2, status_pb2_grpc
from pixpipe_services.notifier.main import Notifier
from pixpipe_services.notifier.snapshots import SnapshotLoader
from tests.support.notifier import BASE_URL, until, wait_for_watchers
from tests.support.stack import read_event, read_rest

IMAGES = 10
CSV = (b"S. No.,Product Name,Input Image Urls\n1,Lamp,\""
       + b",".join(b"https://img.example/%d.jpg" % n for n in range(IMAGES)) + b"\"\n")
DONE = ImageSuccess(output_path="x.jpg", bytes_in=2, bytes_out=1, width=1, height=1)


@pytest.fixture
async def notifier(make_settings: Callable[..., Settings]) -> AsyncIterator[Notifier]:
    running = Notifier(make_settings(status_port=0, watch_resync_seconds=0.05))
    await running.start()
    yield running
    await running.stop(0)


async def new_request(repository: Repository) -> tuple[str, list[str]]:
    request_id, jobs = await repository.create_request(
        parse_products_csv(CSV), options=RequestOptions(), webhook_url=None, file_name="f.csv")
    return request_id, [job.image_id for job in jobs]


async def process_all(repository: Repository, image_ids: list[str]) -> list[ImageChange]:
    """Every image started and finished in the database; the changes, in commit order."""
    changes = []
    for image_id in image_ids:
        for change in (await repository.start_image(image_id),
                       await repository.finish_image(image_id, DONE)):
            assert change is not None
            changes.append(change)
    return changes


def snapshot_loader(notifier: Notifier) -> SnapshotLoader:
    assert notifier.status is not None
    return notifier.status.snapshots


@pytest.fixture
async def patient_notifier(make_settings: Callable[..., Settings]) -> AsyncIterator[Notifier]:
    """A notifier that does not resynchronise from the database while a test writes changes
    it publishes only afterwards (on PostgreSQL the writes alone outlast a short resync)."""
    running = Notifier(make_settings(status_port=0, watch_resync_seconds=30))
    await running.start()
    yield running
    await running.stop(0)


async def test_a_burst_reaches_a_batching_watcher_in_fewer_messages_with_every_event(
        patient_notifier: Notifier, repository: Repository, bus: Bus) -> None:
    notifier = patient_notifier
    request_id, image_ids = await new_request(repository)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{notifier.port}") as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        batching = stub.WatchStatus(status_pb2.WatchStatusRequest(
            request_id=request_id, allow_batches=True), timeout=30)
        plain = stub.WatchStatus(status_pb2.WatchStatusRequest(request_id=request_id),
                                 timeout=30)
        first = await read_event(batching)
        await read_event(plain)
        await wait_for_watchers(notifier, 2)

        changes = await process_all(repository, image_ids)
        publisher = EventPublisher(bus, repository, public_base_url=BASE_URL)
        # Published back to back without yielding: one burst on the wire.
        for change in changes:
            await publisher.image_changed(change)

        batched_messages = await read_rest(batching)
        plain_messages = await read_rest(plain)

    def versions(messages: list[status_pb2.WatchStatusResponse]) -> list[int]:
        return [event.version for message in messages[:-1] for event in unbatched(message)]

    expected = list(range(first.version + 1, first.version + 1 + 2 * IMAGES))
    assert versions(batched_messages) == expected
    assert versions(plain_messages) == expected
    assert "batch" in {message.WhichOneof("event") for message in batched_messages}
    assert len(batched_messages) < len(plain_messages)
    assert {message.WhichOneof("event") for message in plain_messages} == {"image", "completed"}
    for message in (batched_messages[-1], plain_messages[-1]):
        assert message.WhichOneof("event") == "completed"
        assert message.completed.completed == IMAGES
    inner = [event for message in batched_messages[:-1] for event in unbatched(message)]
    assert all(event.WhichOneof("event") == "image" and event.request_id == request_id
               and event.HasField("emitted_at") for event in inner)


async def test_watchers_joining_together_share_one_snapshot_read(
        notifier: Notifier, repository: Repository) -> None:
    request_id, _images = await new_request(repository)
    loader = snapshot_loader(notifier)
    before = loader.reads
    async with grpc.aio.insecure_channel(f"127.0.0.1:{notifier.port}") as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        calls = [stub.WatchStatus(status_pb2.WatchStatusRequest(request_id=request_id),
                                  timeout=30) for _ in range(20)]
        snapshots = [await read_event(call) for call in calls]
        for call in calls:
            call.cancel()
    assert {snapshot.WhichOneof("event") for snapshot in snapshots} == {"snapshot"}
    # At most one read runs at a time and every caller waiting meanwhile shares the next;
    # each read's snapshot (down to its emitted_at) is the one its callers all receive.
    reads = loader.reads - before
    assert 1 <= reads < len(calls) // 2
    assert len({snapshot.SerializeToString() for snapshot in snapshots}) == reads
    await wait_for_watchers(notifier, 0)


async def test_a_shared_read_only_serves_callers_that_asked_before_it_began(
        repository: Repository) -> None:
    request_id, image_ids = await new_request(repository)
    loader = SnapshotLoader(repository, public_base_url=BASE_URL)

    together = await asyncio.gather(*(loader.load(request_id) for _ in range(50)))
    assert loader.reads == 1
    assert all(result is together[0] for result in together)

    early = asyncio.create_task(loader.load(request_id))
    for _ in range(1000):  # a few loop turns until the second read has begun
        if loader.reads == 2:
            break
        await asyncio.sleep(0)
    assert loader.reads == 2
    changed = await repository.start_image(image_ids[0])
    assert changed is not None
    late = await loader.load(request_id)  # asked after the change was committed

    assert late is not None and (await early) is not None
    assert late.view.counters.version >= changed.counters.version
    assert loader.reads == 3
    assert await loader.load("00000000-0000-4000-8000-000000000000") is None


async def test_a_quiet_watcher_checks_counters_and_rereads_only_after_a_lost_event(
        notifier: Notifier, repository: Repository) -> None:
    request_id, image_ids = await new_request(repository)
    loader = snapshot_loader(notifier)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{notifier.port}") as channel:
        call = status_pb2_grpc.StatusServiceStub(channel).WatchStatus(
            status_pb2.WatchStatusRequest(request_id=request_id), timeout=30)
        first = await read_event(call)
        reads = loader.reads
        # Twenty resync periods of a quiet stream (0.05 s each) cost no full read.
        await asyncio.sleep(1.0)
        assert loader.reads == reads

        # A change whose event is lost (never published) arrives as a fresh snapshot.
        changed = await repository.start_image(image_ids[0])
        assert changed is not None
        resynced = await read_event(call)
        call.cancel()

    assert resynced.WhichOneof("event") == "snapshot"
    assert resynced.version == changed.counters.version > first.version
    assert loader.reads == reads + 1


async def test_only_watched_requests_reach_the_notifier_and_completions_are_noticed(
        patient_notifier: Notifier, repository: Repository, bus: Bus) -> None:
    # A resync between a commit and its publish would answer with a snapshot instead.
    notifier = patient_notifier
    assert notifier.hub is not None
    hub = notifier.hub
    watched, watched_images = await new_request(repository)
    _unwatched, unwatched_images = await new_request(repository)
    publisher = EventPublisher(bus, repository, public_base_url=BASE_URL)
    assert hub.subscribed_requests == 0

    async with grpc.aio.insecure_channel(f"127.0.0.1:{notifier.port}") as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        call = stub.WatchStatus(status_pb2.WatchStatusRequest(request_id=watched), timeout=30)
        assert (await read_event(call)).WhichOneof("event") == "snapshot"
        assert hub.subscribed_requests == 1

        # A request nobody here watches runs to its end: its completion is noticed (for its
        # webhook), its events are not delivered here.
        for change in await process_all(repository, unwatched_images):
            await publisher.image_changed(change)
        await until(lambda: hub.completions_noticed == 1)
        # Published after them on the same connection, so delivered after them, had they been.
        started = await repository.start_image(watched_images[0])
        assert started is not None
        await publisher.image_changed(started)
        event = await read_event(call)
        assert (event.WhichOneof("event"), event.version) == ("image", started.counters.version)
        assert hub.events_received == 1

        finished = await repository.finish_image(watched_images[0], DONE)
        assert finished is not None
        await publisher.image_changed(finished)
        for change in await process_all(repository, watched_images[1:]):
            await publisher.image_changed(change)
        rest = await read_rest(call)
        assert rest[-1].WhichOneof("event") == "completed"
        assert hub.events_received == 2 * IMAGES + 1  # every image twice, the completion
        await until(lambda: hub.completions_noticed == 2)

    await wait_for_watchers(notifier, 0)
    await until(lambda: hub.subscribed_requests == 0)
