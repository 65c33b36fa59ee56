"""A catalogue-sized upload through IngestService: 100,000 images recorded and queued once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
import pytest
from sqlalchemy import func, select

from pixpipe.bus import JOBS_STREAM, Bus, jobs_subject
from pixpipe.db.models import ImageRecord, ProductRecord, RequestRecord
from pixpipe.db.repository import Repository
from pixpipe.domain import ImageJob, ImageState, RequestState
from pixpipe.grpc_server import GrpcServer
from pixpipe.settings import Settings
from pixpipe.v1 import ingest_pb2_grpc
from tests.integration.test_ingest import serve_ingest
from tests.support.stack import upload, upload_messages

T = TypeVar("T")

IMAGES = 100_000
PER_PRODUCT = 5
HEADER = b"S. No.,Product Name,Input Image Urls,Notes\n"


def url(serial: int, position: int) -> str:
    return f"https://img.example/catalogue/{serial}/{position}.jpg"


def catalogue_csv() -> bytes:
    rows = [HEADER]
    for serial in range(1, IMAGES // PER_PRODUCT + 1):
        urls = ",".join(url(serial, position) for position in range(PER_PRODUCT))
        notes = "" if serial % 2 else ",fragile"  # every other row stops short of the header
        rows.append(f'{serial},Product {serial},"{urls}"{notes}\n'.encode())
    return b"".join(rows)


@pytest.fixture
async def ingest(make_settings: Callable[..., Settings], repository: Repository,
                 bus: Bus) -> AsyncIterator[GrpcServer]:
    server = await serve_ingest(make_settings(), repository, bus)
    yield server
    await server.stop(0)


async def test_a_catalogue_upload_is_recorded_and_queued_once(
        ingest: GrpcServer, repository: Repository, bus: Bus) -> None:
    answer = await upload(f"127.0.0.1:{ingest.port}", catalogue_csv(), chunk_size=256 * 1024)
    subject = jobs_subject(answer.request_id)
    try:
        stream = await bus.js.stream_info(JOBS_STREAM, subjects_filter=subject)
        last_message = await bus.js.get_last_msg(JOBS_STREAM, subject)
    finally:
        # Nothing in this session may ever try to fetch these.
        await bus.js.purge_stream(JOBS_STREAM, subject=subject)
    assert answer.image_count == IMAGES
    assert stream.state.subjects == {subject: IMAGES}
    last = ImageJob.model_validate_json(last_message.data or b"")

    async with repository._sessions() as session:
        images = await session.scalar(select(func.count()).select_from(ImageRecord).where(
            ImageRecord.request_id == answer.request_id))
        pending = await session.scalar(select(func.count()).select_from(ImageRecord).where(
            ImageRecord.request_id == answer.request_id,
            ImageRecord.status == ImageState.PENDING.value))
        products = (await session.execute(
            select(ProductRecord.serial_number, ProductRecord.product_name, ProductRecord.line,
                   ProductRecord.cells)
            .where(ProductRecord.request_id == answer.request_id)
            .order_by(ProductRecord.id))).all()
        last_image = await session.get(ImageRecord, last.image_id)
    assert images == pending == IMAGES
    assert len(products) == IMAGES // PER_PRODUCT
    assert [product.serial_number for product in products] == list(range(1, len(products) + 1))
    urls = ",".join(url(2, position) for position in range(PER_PRODUCT))
    assert tuple(products[1]) == (2, "Product 2", 3, ["2", "Product 2", urls, "fragile"])
    assert products[-2].cells == [str(len(products) - 1), f"Product {len(products) - 1}",
                                  ",".join(url(len(products) - 1, p) for p in range(5))]
    assert last_image is not None
    assert (last_image.serial_number, last_image.position, last_image.input_url) == (
        len(products), PER_PRODUCT - 1, url(len(products), PER_PRODUCT - 1))
    assert last.url == last_image.input_url and last.request_id == answer.request_id

    view = await repository.get_request(answer.request_id)
    assert view is not None and view.counters.total == IMAGES
    assert [(image.serial_number, image.position, image.product_name)
            for image in view.images[:2]] == [(1, 0, "Product 1"), (1, 1, "Product 1")]


async def test_a_client_that_hangs_up_once_recording_began_still_gets_it_all_queued(
        ingest: GrpcServer, repository: Repository, bus: Bus) -> None:
    file_name = f"hang-up-{uuid.uuid4()}.csv"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.port}") as channel:
        call = ingest_pb2_grpc.IngestServiceStub(channel).Upload(upload_messages(
            catalogue_csv(), chunk_size=256 * 1024, file_name=file_name), timeout=60)
        request_id = await until(lambda: request_named(repository, file_name))
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    subject = jobs_subject(request_id)
    try:
        queued = await until(lambda: jobs_queued(bus, subject, IMAGES))
    finally:
        await bus.js.purge_stream(JOBS_STREAM, subject=subject)
    assert queued == IMAGES
    view = await repository.get_request(request_id, images=None)
    assert view is not None and view.counters.total == IMAGES
    assert (view.counters.status, view.counters.failed) == (RequestState.PENDING, 0)


async def request_named(repository: Repository, file_name: str) -> str | None:
    async with repository._sessions() as session:
        return await session.scalar(
            select(RequestRecord.id).where(RequestRecord.file_name == file_name))


async def jobs_queued(bus: Bus, subject: str, expected: int) -> int | None:
    stream = await bus.js.stream_info(JOBS_STREAM, subjects_filter=subject)
    count: int = (stream.state.subjects or {}).get(subject, 0)
    return count if count >= expected else None


async def until(probe: Callable[[], Awaitable[T | None]], timeout: float = 30) -> T:  # noqa: ASYNC109
    """Poll ``probe`` until it answers something (a wait for a condition, not a sleep)."""
    deadline = time.monotonic() + timeout
    while (answer := await probe()) is None:
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)
    return answer


_PARSE_50_MB = """
import sys
from pixpipe.csv_input import read_products_csv

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

def chunks():
    yield b"S. No.,Product Name,Input Image Urls,Description\\n"
    pending = []
    for serial in range(1, 20_001):
        urls = ",".join(f"https://img.example/{'p' * 380}/{serial}/{n}.jpg" for n in range(5))
        pending.append(f'{serial},Product {serial},"{urls}",{"d" * 440}\\n'.encode())
        if len(pending) == 100:
            yield b"".join(pending)
            pending = []

before = status("VmRSS")
parsed = read_products_csv(chunks())
print(parsed.image_count, sum(map(len, (cell for row in parsed.rows for cell in row.cells))),
      before, status("VmHWM"))
"""


def test_parsing_a_50_mb_upload_holds_little_more_than_its_rows() -> None:
    # A subprocess, so that the peak is this parse's own.
    out = subprocess.run([sys.executable, "-c", _PARSE_50_MB], check=True, capture_output=True,
                         text=True, timeout=120).stdout.split()
    images, text, before, peak = map(int, out)
    assert images == 100_000 and text > 48_000_000
    assert peak - before < 3 * text  # the rows' cells and URLs, twice, and little else
