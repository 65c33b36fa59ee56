"""WatchStatus caps in an in-process notifier: per request, per client, slots given back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from pixpipe.bus import Bus
from pixpipe.call_limits import retry_delay_seconds
from pixpipe.csv_input import parse_products_csv
from pixpipe.db.repository import Repository
from pixpipe.domain import ImageSuccess, RequestOptions
from pixpipe.events import EventPublisher
from pixpipe.settings import Settings
from pixpipe.v1 import status_pb2, status_pb2_grpc
from pixpipe_services.notifier.main import Notifier
from tests.support.notifier import BASE_URL, wait_for_watchers
from tests.support.stack import read_event, read_rest

CSV = b"S. No.,Product Name,Input Image Urls\n1,Lamp,https://img.example/a.jpg\n"


@pytest.fixture
async def notifier(make_settings: Callable[..., Settings]) -> AsyncIterator[Notifier]:
    running = Notifier(make_settings(status_port=0, watch_max_per_request=2,
                                     watch_max_per_client=3, grpc_drain_seconds=0))
    await running.start()
    yield running
    await running.stop(0)


async def new_request(repository: Repository) -> str:
    request_id, _jobs = await repository.create_request(
        parse_products_csv(CSV), options=RequestOptions(), webhook_url=None, file_name="c.csv")
    return request_id


async def refusal(stub: status_pb2_grpc.StatusServiceAsyncStub,
                  request_id: str) -> grpc.aio.AioRpcError:
    call = stub.WatchStatus(status_pb2.WatchStatusRequest(request_id=request_id), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await read_event(call)
    return refused.value


async def test_watchers_past_the_caps_are_refused_until_one_disconnects(
        notifier: Notifier, repository: Repository) -> None:
    first, second, third = [await new_request(repository) for _ in range(3)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{notifier.port}") as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        watching = [stub.WatchStatus(status_pb2.WatchStatusRequest(request_id=request_id))
                    for request_id in (first, first)]
        for call in watching:
            await read_event(call)

        per_request = await refusal(stub, first)
        assert per_request.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"request {first} already has 2 watchers" in (per_request.details() or "")
        assert retry_delay_seconds(per_request) == 5

        other = stub.WatchStatus(status_pb2.WatchStatusRequest(request_id=second))
        await read_event(other)  # another request: the client's third stream
        per_client = await refusal(stub, third)
        assert per_client.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "this client already has 3 watch streams open" in (per_client.details() or "")
        await wait_for_watchers(notifier, 3)  # the refused ones never registered

        watching[0].cancel()  # the client goes away
        await wait_for_watchers(notifier, 2)
        again = stub.WatchStatus(status_pb2.WatchStatusRequest(request_id=first))
        await read_event(again)
        for call in (watching[1], other, again):
            call.cancel()
        await wait_for_watchers(notifier, 0)


async def test_a_stream_that_ends_gives_its_slot_back(
        notifier: Notifier, repository: Repository, bus: Bus) -> None:
    request_id, jobs = await repository.create_request(
        parse_products_csv(CSV), options=RequestOptions(), webhook_url=None, file_name="e.csv")
    publisher = EventPublisher(bus, repository, public_base_url=BASE_URL)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{notifier.port}") as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        calls = [stub.WatchStatus(status_pb2.WatchStatusRequest(request_id=request_id),
                                  timeout=30) for _ in range(2)]
        for call in calls:
            await read_event(call)
        await wait_for_watchers(notifier, 2)
        assert (await refusal(stub, request_id)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        finished = await repository.finish_image(jobs[0].image_id, ImageSuccess(
            output_path="x.jpg", bytes_in=2, bytes_out=1, width=1, height=1))
        assert finished is not None
        await publisher.image_changed(finished)
        for call in calls:
            rest = await read_rest(call)
            assert rest[-1].WhichOneof("event") == "completed"
        await wait_for_watchers(notifier, 0)

        # Both ended with the request: a late watcher gets the snapshot and the completion.
        late = [event async for event in stub.WatchStatus(
            status_pb2.WatchStatusRequest(request_id=request_id), timeout=10)]
        assert late[-1].WhichOneof("event") == "completed"
