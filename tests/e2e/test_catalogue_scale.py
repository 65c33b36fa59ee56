"""A catalogue-sized request (100,000 images) on every interface: upload, paging, filters,
a late watcher, the webhook body and the output CSV. Its sources answer 404, which keeps the
run quick and every image's path through the pipeline real."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from bench.catalogue import catalogue_csv
from bench.corpus import serving
from pixpipe.client import verify
from pixpipe.v1 import status_pb2, status_pb2_grpc
from tests.support.infrastructure import NatsServer
from tests.support.stack import (
    RunningStack,
    read_event,
    running_stack,
    stack_settings,
    upload,
    wait_until_terminal,
)
from tests.support.webhook_receiver import WebhookReceiver

IMAGES = 100_000
PER_PRODUCT = 5
GRPC_MESSAGE_LIMIT = 4 * 1024 * 1024
FAILED = status_pb2.IMAGE_STATE_FAILED

# The module's setup drains 100,000 jobs: about 2.5 min on SQLite on an idle 2-core machine,
# and up to 10 on PostgreSQL beside CI's other two test processes, which share its cores.
DRAIN_SECONDS = 1200
pytestmark = [pytest.mark.slow, pytest.mark.timeout(DRAIN_SECONDS + 120)]


@dataclass
class Catalogue:
    stack: RunningStack
    request_id: str
    webhook: WebhookReceiver
    snapshot: status_pb2.WatchStatusResponse
    snapshot_bytes: int


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    """A loopback origin that answers 404 to every image, quickly."""
    with serving([]) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def catalogue_stack(tmp_path_factory: pytest.TempPathFactory, database_url: str,
                    nats_server: NatsServer) -> Iterator[RunningStack]:
    data_dir = tmp_path_factory.mktemp("catalogue")
    environment = stack_settings(data_dir, database_url=database_url,
                                 nats_url=nats_server.url, PIXPIPE_WORKER_CONCURRENCY="8",
                                 PIXPIPE_LOG_LEVEL="WARNING")
    with running_stack(data_dir, environment, workers=2) as running:
        yield running


@pytest.fixture(scope="module")
async def catalogue(catalogue_stack: RunningStack, origin: str,
                    ) -> AsyncIterator[Catalogue]:
    """Upload 100,000 images, join as a watcher while they run, wait for the end."""
    with WebhookReceiver() as webhook:
        answer = await upload(catalogue_stack.ingest_address,
                              catalogue_csv(origin, IMAGES, per_product=PER_PRODUCT),
                              chunk_size=256 * 1024, webhook_url=webhook.url())
        assert answer.image_count == IMAGES
        async with grpc.aio.insecure_channel(catalogue_stack.status_address) as channel:
            call = status_pb2_grpc.StatusServiceStub(channel).WatchStatus(
                status_pb2.WatchStatusRequest(request_id=answer.request_id))
            snapshot = await read_event(call)
            call.cancel()
        await wait_until_terminal(catalogue_stack.status_address, answer.request_id,
                                  timeout=DRAIN_SECONDS)
        yield Catalogue(stack=catalogue_stack, request_id=answer.request_id, webhook=webhook,
                        snapshot=snapshot, snapshot_bytes=snapshot.ByteSize())


async def test_a_late_watcher_gets_the_summary_and_one_page(catalogue: Catalogue) -> None:
    snapshot = catalogue.snapshot
    assert snapshot.WhichOneof("event") == "snapshot"
    assert snapshot.snapshot.total == IMAGES
    assert len(snapshot.snapshot.images) == 1000
    assert snapshot.snapshot.next_page_token
    assert catalogue.snapshot_bytes < GRPC_MESSAGE_LIMIT // 4


async def test_every_image_is_on_exactly_one_page(catalogue: Catalogue) -> None:
    seen: list[tuple[int, int]] = []
    ids: set[str] = set()
    pages = 0
    token: str | None = ""
    async with httpx.AsyncClient(base_url=catalogue.stack.gateway_url, timeout=30) as client:
        while token is not None:
            response = await client.get(f"/status/{catalogue.request_id}",
                                        params={"page_token": token} if token else {})
            assert response.status_code == 200, response.text
            body = response.json()
            pages += 1
            assert (body["total"], body["failed"], body["completed"]) == (IMAGES, IMAGES, 0)
            assert body["status"] == "failed" and body["in_progress"] == 0
            assert len(body["images"]) == 1000
            for image in body["images"]:
                ids.add(image["image_id"])
                seen.append((image["serial_number"], image["position"]))
                assert image["error"] == "HTTP 404 from source"
            token = body["next_page_token"]
    assert pages == IMAGES // 1000
    assert len(seen) == len(ids) == IMAGES
    assert seen == sorted(seen)
    assert seen[0] == (1, 0) and seen[-1] == (IMAGES // PER_PRODUCT, PER_PRODUCT - 1)


async def test_filters_and_small_pages(catalogue: Catalogue) -> None:
    async with httpx.AsyncClient(base_url=catalogue.stack.gateway_url, timeout=30) as client:
        path = f"/status/{catalogue.request_id}"
        none_completed = (await client.get(path, params={"status": "completed"})).json()
        assert none_completed["images"] == [] and none_completed["next_page_token"] is None
        first = (await client.get(path, params={"status": "failed", "limit": 3})).json()
        second = (await client.get(path, params={"status": "failed", "limit": 3,
                                                 "page_token": first["next_page_token"]})).json()
        order = [(i["serial_number"], i["position"]) for i in first["images"] + second["images"]]
        assert order == [(1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 0)]
        # A token is bound to its filter: using it without the filter is refused.
        refused = await client.get(path, params={"page_token": first["next_page_token"]})
        assert refused.status_code == 400
        assert (await client.get(path, params={"limit": 1001})).status_code == 400
    async with grpc.aio.insecure_channel(catalogue.stack.status_address) as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        listed = await stub.ListImages(status_pb2.ListImagesRequest(
            request_id=catalogue.request_id, page_size=2, status_filter=FAILED), timeout=10)
        assert [image.position for image in listed.images] == [0, 1]
        later = await stub.ListImages(status_pb2.ListImagesRequest(
            request_id=catalogue.request_id, page_size=1000, status_filter=FAILED,
            page_token=listed.next_page_token), timeout=10)
        assert (later.images[0].serial_number, later.images[0].position) == (1, 2)
        summary = await stub.GetStatus(status_pb2.GetStatusRequest(
            request_id=catalogue.request_id, summary_only=True), timeout=10)
        assert not summary.status.images and summary.status.failed == IMAGES


async def test_the_webhook_body_is_bounded_and_links_the_rest(catalogue: Catalogue) -> None:
    post = catalogue.webhook.wait_for_success(timeout=60)
    assert catalogue.stack.settings.webhooks.secret
    verify(post.headers, post.body, catalogue.stack.settings.webhooks.secret)
    assert len(post.body) <= 1024 * 1024
    body = json.loads(post.body)
    assert body["request_id"] == catalogue.request_id and body["status"] == "failed"
    assert body["images"] == [] and body["images_complete"] is False
    assert len(body["failed_images"]) == 1000
    assert body["failed_images_omitted"] == IMAGES - 1000
    base = catalogue.stack.settings.network.public_base_url.rstrip("/")
    assert body["links"]["output_csv"] == f"{base}/status/{catalogue.request_id}/csv"
    assert body["links"]["status"] == f"{base}/status/{catalogue.request_id}"


async def test_the_output_csv_streams_every_product(catalogue: Catalogue,
                                                    tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    async with (httpx.AsyncClient(base_url=catalogue.stack.gateway_url, timeout=60) as client,
                client.stream("GET", f"/status/{catalogue.request_id}/csv") as response):
        assert response.status_code == 200
        with target.open("wb") as out:
            async for chunk in response.aiter_bytes():
                out.write(chunk)
    with target.open(newline="") as handle:
        rows = list(csv.reader(handle))
    urls = rows[0].index("Output Image Urls")
    assert len(rows) == IMAGES // PER_PRODUCT + 1
    assert [row[0] for row in rows[1:4]] == ["1", "2", "3"]
    # every image failed: empty slots in the URLs and in each receipt column after them
    assert rows[-1][urls:] == ["," * (PER_PRODUCT - 1)] * (len(rows[0]) - urls)
    async with grpc.aio.insecure_channel(catalogue.stack.status_address) as channel:
        call = status_pb2_grpc.StatusServiceStub(channel).ExportCsv(
            status_pb2.ExportCsvRequest(request_id=catalogue.request_id), timeout=60)
        sizes = [len(message.chunk) async for message in call]
    assert max(sizes) < GRPC_MESSAGE_LIMIT // 8
    assert sum(sizes) == target.stat().st_size


def test_rows_of_the_generated_catalogue_are_what_the_tests_expect(origin: str) -> None:
    rows = list(csv.reader(io.StringIO(catalogue_csv(origin, 12, per_product=5).decode())))
    assert [len(row[2].split(",")) for row in rows[1:]] == [5, 5, 2]
