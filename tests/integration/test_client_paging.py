"""PixpipeClient pages through a large request against a real status service and database."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from pixpipe.client import ImageState, PixpipeClient, ServerAddresses
from pixpipe.csv_input import parse_products_csv
from pixpipe.db.repository import Repository
from pixpipe.domain import ImageFailure, ImageSuccess, RequestOptions
from pixpipe.settings import Settings
from pixpipe.v1 import status_pb2
from pixpipe_services.notifier.main import Notifier

PRODUCTS, URLS_PER_PRODUCT = 500, 5
IMAGES = PRODUCTS * URLS_PER_PRODUCT


def catalogue_csv() -> bytes:
    rows = [f'{serial},Product {serial},"' + ",".join(
        f"https://img.example/{serial}/{k}.jpg" for k in range(URLS_PER_PRODUCT)) + '"'
        for serial in range(1, PRODUCTS + 1)]
    return ("S. No.,Product Name,Input Image Urls\n" + "\n".join(rows) + "\n").encode()


@pytest.fixture
async def notifier(make_settings: Callable[..., Settings]) -> AsyncIterator[Notifier]:
    running = Notifier(make_settings(status_port=0, grpc_drain_seconds=0))
    await running.start()
    yield running
    await running.stop(0)


@pytest.fixture
async def client(notifier: Notifier) -> AsyncIterator[PixpipeClient]:
    # Nothing here uploads: the ingest address is never dialled.
    addresses = ServerAddresses(ingest="127.0.0.1:9", status=f"127.0.0.1:{notifier.port}")
    async with PixpipeClient(addresses) as opened:
        yield opened


@pytest.fixture
async def catalogue(repository: Repository) -> tuple[str, list[str]]:
    """A request of 2,500 images: every 7th failed, every 5th of the rest completed."""
    request_id, jobs = await repository.create_request(
        parse_products_csv(catalogue_csv()), options=RequestOptions(), webhook_url=None,
        file_name="catalogue.csv")
    for index, job in enumerate(jobs):
        if index % 7 == 0:
            await repository.finish_image(job.image_id, ImageFailure("HTTP 404 from source"))
        elif index % 5 == 0:
            await repository.finish_image(job.image_id, ImageSuccess(
                output_path=f"{request_id}/{job.image_id}.jpg", bytes_in=2, bytes_out=1,
                width=1, height=1))
    return request_id, [job.image_id for job in jobs]


def keys(images: list[status_pb2.ImageStatus]) -> list[tuple[int, int]]:
    return [(image.serial_number, image.position) for image in images]


async def test_list_images_yields_every_image_once_in_order(
        client: PixpipeClient, catalogue: tuple[str, list[str]]) -> None:
    request_id, image_ids = catalogue
    images = [image async for image in client.list_images(request_id)]
    assert [image.image_id for image in images] == image_ids
    assert keys(images) == sorted(keys(images)) and len(set(keys(images))) == IMAGES

    # A page size that does not divide the total, and one that crosses products mid-cell.
    odd = [image.image_id async for image in client.list_images(request_id, page_size=333)]
    assert odd == image_ids


async def test_list_images_by_state_matches_the_counters(
        client: PixpipeClient, catalogue: tuple[str, list[str]]) -> None:
    request_id, image_ids = catalogue
    failed = [image async for image in client.list_images(request_id, status="failed",
                                                          page_size=100)]
    assert [image.image_id for image in failed] == image_ids[::7]
    assert {image.error for image in failed} == {"HTTP 404 from source"}
    completed = [image async for image in client.list_images(
        request_id, status=ImageState.COMPLETED)]
    pending = [image async for image in client.list_images(request_id, status="pending")]
    summary = await client.get_status(request_id, summary_only=True)
    assert (len(failed), len(completed)) == (summary.failed, summary.completed)
    assert len(pending) == summary.in_progress == IMAGES - summary.failed - summary.completed
    assert not summary.images and not summary.next_page_token
    with pytest.raises(ValueError, match="broken"):
        [image async for image in client.list_images(request_id, status="broken")]


async def test_get_status_pages_continue_in_list_images(
        client: PixpipeClient, catalogue: tuple[str, list[str]]) -> None:
    request_id, image_ids = catalogue
    first = await client.get_status(request_id)
    assert len(first.images) == 1000 and first.next_page_token
    assert first.total == IMAGES and first.in_progress == IMAGES - first.completed - first.failed

    paged = list(first.images)
    token = first.next_page_token
    while token:
        page = await client.get_status(request_id, page_size=700, page_token=token)
        assert len(page.images) <= 700
        paged.extend(page.images)
        token = page.next_page_token
    assert [image.image_id for image in paged] == image_ids

    failed_page = await client.get_status(request_id, status="failed", page_size=50)
    rest = [image.image_id async for image in client.list_images(
        request_id, status="failed", page_token=failed_page.next_page_token)]
    assert [image.image_id for image in failed_page.images] + rest == image_ids[::7]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        [image async for image in client.list_images(
            request_id, status="completed", page_token=failed_page.next_page_token)]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_export_csv_streams_one_row_per_product(
        client: PixpipeClient, repository: Repository,
        catalogue: tuple[str, list[str]]) -> None:
    request_id, _image_ids = catalogue
    await repository.fail_unqueued_request(request_id, "test: the rest never ran")
    chunks = [chunk async for chunk in client.export_csv(request_id,
                                                         base_url="https://cdn.example")]
    rows = list(csv.reader(io.StringIO(b"".join(chunks).decode())))
    urls = rows[0].index("Output Image Urls")
    assert len(rows) == PRODUCTS + 1
    assert [row[0] for row in rows[1:]] == [str(serial) for serial in range(1, PRODUCTS + 1)]
    # Image 5, product 2's first, completed; product 1's failed and leave empty slots.
    assert rows[1][urls] == ",,,,"
    assert rows[2][urls].split(",")[0].startswith(f"https://cdn.example/processed_images/"
                                                 f"{request_id}/")


async def test_unknown_request_is_not_found(client: PixpipeClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        [image async for image in client.list_images("0" * 8 + "-0000-4000-8000-" + "0" * 12)]
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
