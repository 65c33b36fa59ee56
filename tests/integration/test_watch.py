"""WatchStatus in an in-process notifier: resources are freed when watchers go away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import grpc
import pytest

from pixpipe.bus import Bus
from pixpipe.csv_input import parse_products_csv
from pixpipe.db.repository import Repository
from pixpipe.domain import ImageSuccess, RequestOptions
from pixpipe.events import EventPublisher
from pixpipe.settings import Settings
from pixpipe.v1 import status_pb2, status_pb2_grpc
from pixpipe_services.notifier.main import Notifier
from tests.support.notifier import BASE_URL, wait_for_watchers
from tests.support.stack import read_event, read_rest

CSV = (b"S. No.,Product Name,Input Image Urls\n"
       b'1,Lamp,"https://img.example/a.jpg,https://img.example/b.jpg"\n')


@pytest.fixture
async def notifier(make_settings: Callable[..., Settings]) -> AsyncIterator[Notifier]:
    running = Notifier(make_settings(status_port=0))
    await running.start()
    yield running
    await running.stop(0)


async def test_cancelled_and_expired_watchers_release_their_subscriptions(
        notifier: Notifier, repository: Repository) -> None:
    request_id, _jobs = await repository.create_request(
        parse_products_csv(CSV), options=RequestOptions(), webhook_url=None, file_name="w.csv")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{notifier.port}") as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        calls = [stub.WatchStatus(status_pb2.WatchStatusRequest(request_id=request_id))
                 for _ in range(5)]
        for call in calls:
            first = await read_event(call)
            assert first.WhichOneof("event") == "snapshot"
        await wait_for_watchers(notifier, 5)
        for call in calls[:3]:
            call.cancel()
        await wait_for_watchers(notifier, 2)
        for call in calls[3:]:
            call.cancel()
        await wait_for_watchers(notifier, 0)

        expiring = stub.WatchStatus(status_pb2.WatchStatusRequest(request_id=request_id),
                                    timeout=0.5)
        await read_event(expiring)
        await wait_for_watchers(notifier, 1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await expiring.read()
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await wait_for_watchers(notifier, 0)


async def test_a_watcher_receives_each_committed_change(
        notifier: Notifier, repository: Repository, bus: Bus) -> None:
    request_id, jobs = await repository.create_request(
        parse_products_csv(CSV), options=RequestOptions(), webhook_url=None, file_name="w.csv")
    publisher = EventPublisher(bus, repository, public_base_url=BASE_URL)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{notifier.port}") as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        call = stub.WatchStatus(status_pb2.WatchStatusRequest(request_id=request_id),
                                timeout=30)
        snapshot = await read_event(call)
        await wait_for_watchers(notifier, 1)
        for job in jobs:
            started = await repository.start_image(job.image_id)
            assert started is not None
            await publisher.image_changed(started)
            finished = await repository.finish_image(job.image_id, ImageSuccess(
                output_path="x.jpg", bytes_in=2, bytes_out=1, width=1, height=1))
            assert finished is not None
            await publisher.image_changed(finished)
        rest = await read_rest(call)
    kinds = [event.WhichOneof("event") for event in rest]
    assert kinds == ["image", "image", "image", "image", "completed"]
    assert [event.version for event in rest[:-1]] == list(
        range(snapshot.version + 1, snapshot.version + 5))
    assert rest[-1].completed.completed == 2
    await wait_for_watchers(notifier, 0)


async def test_notifier_gauges_follow_queue_backlog_and_watchers(
        notifier: Notifier, repository: Repository, bus: Bus) -> None:
    from pixpipe_services.notifier.gauges import refresh_gauges

    request_id, _jobs = await repository.create_request(
        parse_products_csv(CSV), options=RequestOptions(), webhook_url=None, file_name="g.csv")
    assert notifier.hub is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{notifier.port}") as channel:
        call = status_pb2_grpc.StatusServiceStub(channel).WatchStatus(
            status_pb2.WatchStatusRequest(request_id=request_id), timeout=30)
        await read_event(call)
        await wait_for_watchers(notifier, 1)
        await refresh_gauges(notifier.metrics, bus, notifier.webhooks, notifier.hub)
        assert notifier.metrics.watchers._value.get() == 1
        call.cancel()
    await wait_for_watchers(notifier, 0)
    await refresh_gauges(notifier.metrics, bus, notifier.webhooks, notifier.hub)
    assert notifier.metrics.watchers._value.get() == 0
    assert notifier.metrics.webhook_backlog._value.get() >= 0


async def test_a_completion_left_unpublished_is_published_by_the_sweeper(
        repository: Repository, bus: Bus) -> None:
    """A worker that died between its commit and the publish: the notifier's sweep covers it."""
    from pixpipe.events import republish_completions

    request_id, jobs = await repository.create_request(
        parse_products_csv(CSV), options=RequestOptions(), webhook_url=None, file_name="s.csv")
    changes = [await repository.finish_image(job.image_id, ImageSuccess(
        output_path="x.jpg", bytes_in=2, bytes_out=1, width=1, height=1)) for job in jobs]
    assert changes[-1] is not None and changes[-1].finished_request  # nobody published it

    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def collect(message) -> None:
        if message.headers and message.headers.get("Nats-Msg-Id", "").endswith(".completed"):
            await received.put(message.data)

    subscription = await bus.client.subscribe(f"pixpipe.events.{request_id}", cb=collect)
    stop = asyncio.Event()
    sweeping = asyncio.create_task(republish_completions(
        EventPublisher(bus, repository, public_base_url=BASE_URL), repository, stop,
        grace_seconds=0, interval=0.1))
    try:
        payload = await asyncio.wait_for(received.get(), timeout=10)
    finally:
        stop.set()
        await sweeping
        await subscription.unsubscribe()
    event = status_pb2.WatchStatusResponse()
    event.ParseFromString(payload)
    assert event.WhichOneof("event") == "completed" and event.completed.completed == 2
    assert request_id not in await repository.unpublished_completions(
        finished_before=datetime.now(UTC))
