"""The pipeline with outputs in S3-compatible storage (a real SeaweedFS), and its restart."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from pixpipe.v1 import status_pb2
from tests.support.http_server import CorpusHttpServer
from tests.support.infrastructure import NatsServer
from tests.support.seaweedfs import BUCKET, SeaweedS3, seaweed_s3
from tests.support.stack import (
    RunningStack,
    batch_csv,
    get_status,
    products_csv,
    running_stack,
    stack_settings,
    upload,
    wait_until_terminal,
)

PREFIX = "e2e"


@pytest.fixture(scope="module")
def own_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """This module's own server: its last test restarts it."""
    with seaweed_s3(tmp_path_factory.mktemp("seaweedfs-e2e")) as server:
        yield server


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory: pytest.TempPathFactory, database_url: str,
             nats_server: NatsServer, own_s3: SeaweedS3) -> Iterator[RunningStack]:
    data_dir = tmp_path_factory.mktemp("stack-s3")
    environment = stack_settings(
        data_dir, database_url=database_url, nats_url=nats_server.url,
        # Retries span an S3 restart even on a busy machine: 55 s of backoff over ten
        # deliveries (a restart took 5 to 20 s here).
        PIXPIPE_JOB_RETRY_BACKOFF_SECONDS="1,2,4,8", PIXPIPE_JOB_MAX_DELIVER="10",
        **own_s3.environment(prefix=PREFIX))
    with running_stack(data_dir, environment, workers=2) as running:
        yield running


def _decodes(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return str(image.format)


async def test_products_csv_on_object_storage(s3_stack: RunningStack, own_s3: SeaweedS3,
                                              corpus_server: CorpusHttpServer,
                                              corpus_dir: Path) -> None:
    answer = await upload(s3_stack.ingest_address,
                          products_csv(corpus_dir, corpus_server.port))
    status = await wait_until_terminal(s3_stack.status_address, answer.request_id)
    assert (status.total, status.completed, status.failed) == (14, 12, 2)

    completed = [image for image in status.images
                 if image.status == status_pb2.IMAGE_STATE_COMPLETED]
    assert all(image.output_url.startswith(f"{s3_stack.gateway_url}/processed_images/")
               for image in completed)  # absolute: they work from outside
    async with httpx.AsyncClient(base_url=s3_stack.gateway_url, timeout=30) as client:
        first = await client.get(completed[0].output_url)
        assert first.status_code == 307
        assert first.headers["location"].startswith(own_s3.endpoint_url)
        for image in completed:
            stored = await client.get(image.output_url, follow_redirects=True)
            assert stored.status_code == 200, image.output_url
            assert len(stored.content) == image.bytes_out
            assert stored.headers["content-type"].startswith("image/")
            assert "max-age" in stored.headers["cache-control"]
            assert _decodes(stored.content)

        exported = await client.get(f"/status/{answer.request_id}/csv")
        assert exported.status_code == 200
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        urls = [url for row in rows for url in row["Output Image Urls"].split(",") if url]
        assert len(urls) == 12
        for url in urls:
            assert url.startswith(s3_stack.gateway_url + "/processed_images/")
            fetched = await client.get(url, follow_redirects=True)
            assert fetched.status_code == 200 and _decodes(fetched.content)

    keys = own_s3.object_keys(prefix=f"{PREFIX}/{answer.request_id}/")
    assert len(keys) == 12
    assert not s3_stack.settings.storage.images_dir.exists()


async def test_s3_restart_mid_batch_loses_nothing(s3_stack: RunningStack, own_s3: SeaweedS3,
                                                  corpus_server: CorpusHttpServer) -> None:
    answer = await upload(s3_stack.ingest_address,
                          batch_csv(corpus_server, 60, tag="s3restart"))
    for _ in range(1200):  # a minute at most
        before = await get_status(s3_stack.status_address, answer.request_id)
        if before.completed >= 8:
            break
        await asyncio.sleep(0.05)
    await asyncio.to_thread(own_s3.restart, down_seconds=1.0)
    assert before.completed < 50, "the batch was nearly done before the restart"

    status = await wait_until_terminal(s3_stack.status_address, answer.request_id,
                                       timeout=150)
    errors = {image.error for image in status.images if image.error}
    assert (status.completed, status.failed) == (60, 0), (errors, s3_stack.logs()[-3000:])
    expected = {f"{PREFIX}/{image.output_url.split('/processed_images/')[1]}"
                for image in status.images}
    assert set(own_s3.object_keys(BUCKET, prefix=f"{PREFIX}/{answer.request_id}/")) == expected
    async with httpx.AsyncClient(base_url=s3_stack.gateway_url, timeout=30) as client:
        for image in status.images[::6]:
            stored = await client.get(image.output_url, follow_redirects=True)
            assert stored.status_code == 200 and _decodes(stored.content)
