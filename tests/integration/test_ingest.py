"""IngestService over a real gRPC port, against a real database and a real NATS server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from sqlalchemy import select

from pixpipe.auth import Authenticator
from pixpipe.bus import JOBS_STREAM, Bus
from pixpipe.call_limits import retry_delay_seconds
from pixpipe.db.models import RequestRecord
from pixpipe.db.repository import Repository
from pixpipe.dev.embedded_nats import free_port
from pixpipe.domain import ImageState, RequestState
from pixpipe.grpc_errors import bad_request_details
from pixpipe.grpc_server import GrpcServer
from pixpipe.settings import Settings
from pixpipe.v1 import ingest_pb2, ingest_pb2_grpc
from pixpipe_services.ingest.servicer import IngestServicer
from tests.support.infrastructure import start_own_nats
from tests.support.notifier import until
from tests.support.stack import upload, upload_messages

CSV = (b"S. No.,Product Name,Input Image Urls\n"
       b'1,Lamp,"https://img.example/a.jpg,https://img.example/b.jpg"\n'
       b"2,Desk,https://img.example/c.jpg\n")


async def serve_ingest(settings: Settings, repository: Repository, bus: Bus) -> GrpcServer:
    server = GrpcServer(host="127.0.0.1", port=free_port(),
                        authenticator=Authenticator(api_token=settings.auth.api_token, keys=None))
    server.add(ingest_pb2_grpc.add_IngestServiceServicer_to_server,
               IngestServicer(settings.limits, repository, bus, jobs=settings.jobs,
                              fetch=settings.fetch), "pixpipe.v1.IngestService")
    await server.start()
    return server


async def test_upload_publishes_one_job_per_image(
        make_settings: Callable[..., Settings], repository: Repository, tmp_path: Path) -> None:
    nats_server = start_own_nats(tmp_path / "js")
    try:
        settings = make_settings(nats_url=nats_server.url)
        bus = await Bus.connect(settings.nats, name="test-ingest")
        server = await serve_ingest(settings, repository, bus)
        try:
            answer = await upload(f"127.0.0.1:{server.port}", CSV, chunk_size=10)
            info = await bus.js.stream_info(JOBS_STREAM)
        finally:
            await server.stop(0)
            await bus.close()
    finally:
        nats_server.stop()
    assert answer.image_count == 3
    assert info.state.messages == 3
    view = await repository.get_request(answer.request_id)
    assert view is not None and view.counters.total == 3
    assert [image.input_url.rsplit("/", 1)[-1] for image in view.images] == [
        "a.jpg", "b.jpg", "c.jpg"]


async def test_broker_down_fails_the_request_instead_of_leaving_it_stuck(
        make_settings: Callable[..., Settings], repository: Repository, tmp_path: Path) -> None:
    nats_server = start_own_nats(tmp_path / "js")
    settings = make_settings(nats_url=nats_server.url, nats_request_timeout_seconds=1.0)
    bus = await Bus.connect(settings.nats, name="test-ingest")
    server = await serve_ingest(settings, repository, bus)
    file_name = f"unqueued-{uuid.uuid4()}.csv"
    try:
        nats_server.stop()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await upload(f"127.0.0.1:{server.port}", CSV, file_name=file_name)
    finally:
        await server.stop(0)
        await bus.close()
        nats_server.stop()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    async with repository._sessions() as session:
        request_id = await session.scalar(
            select(RequestRecord.id).where(RequestRecord.file_name == file_name))
    assert request_id is not None
    view = await repository.get_request(request_id)
    assert view is not None
    assert view.counters.status == RequestState.FAILED
    assert (view.counters.failed, view.counters.total) == (3, 3)
    assert all(image.status == ImageState.FAILED and "could not be queued" in (image.error or "")
               for image in view.images)


async def test_metadata_after_data_and_oversize_uploads_are_refused(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus) -> None:
    settings = make_settings(max_upload_bytes=64)
    server = await serve_ingest(settings, repository, bus)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as too_big:
                await upload(f"127.0.0.1:{server.port}", CSV * 3)
            late_metadata = [ingest_pb2.UploadRequest(chunk=b"S. No."),
                             ingest_pb2.UploadRequest(metadata=ingest_pb2.UploadMetadata())]
            with pytest.raises(grpc.aio.AioRpcError) as misordered:
                await stub.Upload(iter(late_metadata), timeout=10)
    finally:
        await server.stop(0)
    assert too_big.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "size limit" in (too_big.value.details() or "")
    assert misordered.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_api_token_is_required_when_configured(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus) -> None:
    settings = make_settings(api_token="s3cret")
    server = await serve_ingest(settings, repository, bus)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await upload(f"127.0.0.1:{server.port}", CSV)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            answer = await stub.Upload(upload_messages(CSV),
                                       metadata=(("authorization", "Bearer s3cret"),),
                                       timeout=30)
    finally:
        await server.stop(0)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert answer.image_count == 3


HEADER = "S. No.,Product Name,Input Image Urls"
URL = "https://img.example/a.jpg"


@pytest.mark.parametrize(
    ("csv", "settings", "violation"),
    [
        pytest.param(HEADER + "," * 1_000_000 + f"\n1,A,{URL}\n", {}, "1:65:", id="columns"),
        pytest.param(HEADER + ",Notes,Size\n1,A,x,y,z\n", {"max_csv_columns": 4}, "1:5:",
                     id="column-setting"),
        pytest.param(f"{HEADER}\n1,{'N' * 513},{URL}\n", {}, "2:2:Product Name", id="name"),
        pytest.param(f"{HEADER},Notes\n1,A,{URL},{'x' * 70_000}\n", {}, "2:4:Notes",
                     id="cell"),
        pytest.param(f'{HEADER}\n1,A,"{",".join([URL] * 101)}"\n', {}, "2:3:Input Image Urls",
                     id="urls-per-product"),
        pytest.param(f'{HEADER}\n1,A,"{URL},{URL}"\n', {"max_urls_per_product": 1},
                     "2:3:Input Image Urls", id="urls-setting"),
        pytest.param(HEADER + "\n" + "".join(f"{n},P{n},{URL}\n" for n in range(1, 5000)),
                     {"max_images_per_request": 3}, "5:3:Input Image Urls", id="images"),
    ],
)
async def test_input_that_amplifies_is_refused_with_line_and_column(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus,
        csv: str, settings: dict[str, int], violation: str) -> None:
    server = await serve_ingest(make_settings(**settings), repository, bus)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await upload(f"127.0.0.1:{server.port}", csv.encode(), chunk_size=1024)
    finally:
        await server.stop(0)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [item.field for item in bad_request_details(refused.value)] == [violation]


async def test_a_file_with_a_thousand_faults_is_refused_as_invalid_not_oversized(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus) -> None:
    """Every fault listed would pass the 8 KB of trailers gRPC clients reliably accept,
    turning the refusal into RESOURCE_EXHAUSTED: the first ones are listed, the rest counted."""
    csv = HEADER + "\n" + "".join(f"x{n},P{n},{URL}\n" for n in range(1, 1200))
    server = await serve_ingest(make_settings(), repository, bus)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await upload(f"127.0.0.1:{server.port}", csv.encode(), chunk_size=64 * 1024)
    finally:
        await server.stop(0)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = bad_request_details(refused.value)
    assert 20 < len(violations) < 200
    assert violations[0].field == "2:1:S. No."
    assert violations[-1].field == "0:0:"
    assert "more faults not listed" in violations[-1].description


MALFORMED_WEBHOOKS = [
    ("ftp://hooks.example/x", "scheme must be http or https"),
    ("https://user:secret@hooks.example/x", "credentials in URLs are not allowed"),
    ("http://a..b/", "'a..b' is not a valid host name"),
    ("http://①②⑦.0.0.1/", "host is not a valid domain name"),
    ("http://hooks.example:99999/", "malformed URL"),
]
PRIVATE_WEBHOOKS = [
    "http://127.0.0.1:9/hook",
    "http://2130706433/hook",
    "http://0177.0.0.1/hook",
    "http://0x7f.1/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.8/hook",
    "http://[fe80::1]/hook",
]


async def refusal_of(address: str, webhook_url: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await upload(address, CSV, webhook_url=webhook_url, file_name="webhook-refused.csv")
    return refused.value


async def test_a_malformed_webhook_url_is_refused_at_upload(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus) -> None:
    server = await serve_ingest(make_settings(), repository, bus)  # private networks allowed
    try:
        refusals = [(await refusal_of(f"127.0.0.1:{server.port}", url), reason)
                    for url, reason in MALFORMED_WEBHOOKS]
    finally:
        await server.stop(0)
    for error, reason in refusals:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith("webhook_url: ")
        assert reason in (error.details() or "")
        assert [(v.field, reason in v.description) for v in bad_request_details(error)] == [
            ("webhook_url", True)]
    await assert_nothing_recorded(repository, "webhook-refused.csv")


async def test_a_webhook_url_to_a_private_address_is_refused_unless_allowed(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus) -> None:
    server = await serve_ingest(make_settings(allow_private_networks=False), repository, bus)
    try:
        refusals = [await refusal_of(f"127.0.0.1:{server.port}", url)
                    for url in PRIVATE_WEBHOOKS]
        accepted = await upload(f"127.0.0.1:{server.port}", CSV,
                                webhook_url="https://hooks.example/pixpipe")
    finally:
        await server.stop(0)
    for url, error in zip(PRIVATE_WEBHOOKS, refusals, strict=True):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, url
        assert "webhooks must go to a public address" in (error.details() or ""), url
    await assert_nothing_recorded(repository, "webhook-refused.csv")
    assert accepted.image_count == 3

    allowing = await serve_ingest(make_settings(), repository, bus)
    try:
        answer = await upload(f"127.0.0.1:{allowing.port}", CSV,
                              webhook_url="http://127.0.0.1:9/hook")
    finally:
        await allowing.stop(0)
    assert answer.image_count == 3


async def assert_nothing_recorded(repository: Repository, file_name: str) -> None:
    async with repository._sessions() as session:
        found = await session.scalar(
            select(RequestRecord.id).where(RequestRecord.file_name == file_name))
    assert found is None


UploadCall = grpc.aio.StreamUnaryCall[ingest_pb2.UploadRequest, ingest_pb2.UploadResponse]


class HeldUpload:
    """An upload whose stream stays open after its first chunk until ``finish``."""

    def __init__(self, stub: ingest_pb2_grpc.IngestServiceAsyncStub) -> None:
        self._finished = asyncio.Event()
        self.call: UploadCall = stub.Upload(self._messages(), timeout=30)

    async def _messages(self) -> AsyncIterator[ingest_pb2.UploadRequest]:
        messages = list(upload_messages(CSV, chunk_size=40))
        yield messages[0]
        yield messages[1]
        await self._finished.wait()
        for message in messages[2:]:
            yield message

    async def finish(self) -> ingest_pb2.UploadResponse:
        self._finished.set()
        response: ingest_pb2.UploadResponse = await self.call
        return response


async def test_uploads_past_the_limit_are_refused_until_one_finishes(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus) -> None:
    settings = make_settings(ingest_max_concurrent_uploads=2)
    servicer = IngestServicer(settings.limits, repository, bus, jobs=settings.jobs,
                              fetch=settings.fetch)
    server = GrpcServer(host="127.0.0.1", port=free_port(), authenticator=Authenticator.open())
    server.add(ingest_pb2_grpc.add_IngestServiceServicer_to_server, servicer,
               "pixpipe.v1.IngestService")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            held = [HeldUpload(stub), HeldUpload(stub)]
            await until(lambda: servicer.uploads_in_progress == 2)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Upload(upload_messages(CSV), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "2 uploads are already in progress" in (refused.value.details() or "")
            assert retry_delay_seconds(refused.value) == 1

            first = await held[0].finish()
            assert first.image_count == 3
            await until(lambda: servicer.uploads_in_progress == 1)
            third = await stub.Upload(upload_messages(CSV), timeout=10)
            assert third.image_count == 3

            # A client that hangs up mid-stream gives its slot back too.
            held[1].call.cancel()
            await until(lambda: servicer.uploads_in_progress == 0)
    finally:
        await server.stop(0)
