"""IngestService over a real gRPC port, against a real database and a real NATS server."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from sqlalchemy import select

from pixpipe.bus import JOBS_STREAM, Bus
from pixpipe.db.models import RequestRecord
from pixpipe.db.repository import Repository
from pixpipe.domain import ImageState, RequestState
from pixpipe.embedded_nats import free_port
from pixpipe.grpc_errors import bad_request_details
from pixpipe.grpc_server import GrpcServer
from pixpipe.settings import Settings
from pixpipe.v1 import ingest_pb2, ingest_pb2_grpc
from services.ingest.servicer import IngestServicer
from tests.support.infrastructure import start_own_nats
from tests.support.stack import upload

CSV = (b"S. No.,Product Name,Input Image Urls\n"
       b'1,Lamp,"https://img.example/a.jpg,https://img.example/b.jpg"\n'
       b"2,Desk,https://img.example/c.jpg\n")


async def serve_ingest(settings: Settings, repository: Repository, bus: Bus) -> GrpcServer:
    server = GrpcServer(host="127.0.0.1", port=free_port(), api_token=settings.api_token)
    server.add(ingest_pb2_grpc.add_IngestServiceServicer_to_server,
               IngestServicer(settings, repository, bus), "pixpipe.v1.IngestService")
    await server.start()
    return server


async def test_upload_publishes_one_job_per_image(
        make_settings: Callable[..., Settings], repository: Repository, tmp_path: Path) -> None:
    nats_server = start_own_nats(tmp_path / "js")
    try:
        settings = make_settings(nats_url=nats_server.url)
        bus = await Bus.connect(settings, name="test-ingest")
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
    bus = await Bus.connect(settings, name="test-ingest")
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
            from tests.support.stack import upload_messages

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
    """Every fault listed would pass the 16 KB of trailers gRPC clients accept by default,
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
