"""The whole pipeline through its public interfaces: gRPC and REST, real servers only."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from pathlib import Path

import grpc
import httpx
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from sqlalchemy import func, select

from pixpipe.bus import JOBS_STREAM, WORKERS_DURABLE, jobs_subject
from pixpipe.client import verify
from pixpipe.db.engine import create_engine, session_factory
from pixpipe.db.models import ImageRecord
from pixpipe.domain import ImageJob
from pixpipe.grpc_errors import bad_request_details
from pixpipe.v1 import options_pb2, status_pb2
from tests.support.http_server import CorpusHttpServer
from tests.support.stack import (
    RunningStack,
    get_status,
    products_csv,
    upload,
    wait_until_terminal,
)
from tests.support.webhook_receiver import WebhookReceiver

COMPLETED = status_pb2.IMAGE_STATE_COMPLETED
FAILED = status_pb2.IMAGE_STATE_FAILED


async def test_products_csv_over_grpc(stack: RunningStack, corpus_server: CorpusHttpServer,
                                      corpus_dir: Path) -> None:
    csv_bytes = products_csv(corpus_dir, corpus_server.port)
    answer = await upload(stack.ingest_address, csv_bytes, chunk_size=97)
    assert uuid.UUID(answer.request_id).version == 4
    assert answer.image_count == 14
    assert answer.message == "File uploaded successfully"

    status = await wait_until_terminal(stack.status_address, answer.request_id)

    assert status.status == status_pb2.REQUEST_STATE_COMPLETED
    assert (status.total, status.completed, status.failed) == (14, 12, 2)
    order = [(image.serial_number, image.position) for image in status.images]
    assert order == sorted(order)
    failures = {image.input_url.rsplit("/", 1)[-1]: image.error
                for image in status.images if image.status == FAILED}
    assert set(failures) == {"broken.png", "missing.jpg"}
    assert failures["missing.jpg"] == "HTTP 404 from source"
    assert failures["broken.png"]  # a readable reason, whatever the decoder says
    for image in status.images:
        if image.status != COMPLETED:
            continue
        assert image.output_url == (f"{stack.gateway_url}/processed_images/"
                                    f"{answer.request_id}/{image.image_id}.jpg")
        stored = stack.settings.storage.images_dir / answer.request_id / f"{image.image_id}.jpg"
        with Image.open(stored) as decoded:
            assert decoded.format == "JPEG"
            assert decoded.mode in ("RGB", "L")
        assert image.bytes_out == stored.stat().st_size
        if image.input_url.endswith(".jpg"):
            assert image.bytes_out <= image.bytes_in


async def test_rest_upload_status_and_files(stack: RunningStack,
                                            corpus_server: CorpusHttpServer,
                                            corpus_dir: Path) -> None:
    csv_bytes = products_csv(corpus_dir, corpus_server.port)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        response = await client.post("/upload/", files={"file": ("products.csv", csv_bytes)},
                                     data={"quality": "40", "max_width": "300"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["message"] == "File uploaded successfully"
        assert body["image_count"] == 14
        request_id = body["request_id"]

        await wait_until_terminal(stack.status_address, request_id)
        status = (await client.get(f"/status/{request_id}")).json()
        assert status["request_id"] == request_id
        assert status["status"] == "completed"
        assert (status["total"], status["completed"], status["failed"]) == (14, 12, 2)
        assert status["created_at"] and status["completed_at"]
        first = status["images"][0]
        assert first["serial_number"] == 1 and first["product_name"] == "Rocket Poster"
        assert first["status"] == "completed" and first["error"] is None
        assert isinstance(first["bytes_in"], int) and 0 < first["bytes_out"] < first["bytes_in"]

        image = await client.get(first["output_url"])
        assert image.status_code == 200
        with Image.open(io.BytesIO(image.content)) as decoded:
            assert decoded.width <= 300  # the max_width option reached the worker

        failed = [item for item in status["images"] if item["status"] == "failed"]
        assert {item["input_url"].rsplit("/", 1)[-1] for item in failed} == {
            "broken.png", "missing.jpg"}
        assert all(item["error"] and item["output_url"] is None for item in failed)


async def test_rest_errors(stack: RunningStack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        unknown = await client.get(f"/status/{uuid.uuid4()}")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["status"] == "NOT_FOUND"
        malformed = await client.get("/status/not-a-uuid")
        assert malformed.status_code == 400

        bad_csv = (b"S. No.,Product Name,Input Image Urls\n"
                   b"1,,https://example.com/a.jpg\n"
                   b"x,Thing,ftp://example.com/b.jpg\n")
        refused = await client.post("/upload/", files={"file": ("bad.csv", bad_csv)})
        assert refused.status_code == 400
        faults = {(fault["line"], fault["column"]) for fault in refused.json()["errors"]}
        assert {(2, 2), (3, 1), (3, 3)} <= faults
        assert refused.json()["error"]["details"][0]["@type"].endswith("BadRequest")

        bad_webhook = await client.post(
            "/upload/", files={"file": ("ok.csv", b"S. No.,Product Name,Input Image Urls\n"
                                                  b"1,A,https://example.com/a.jpg\n")},
            data={"webhook_url": "ftp://example.com/hook"})
        assert bad_webhook.status_code == 400

        health = await client.get("/healthz")
        assert health.status_code == 200


async def test_grpc_refuses_bad_csv_with_every_fault(stack: RunningStack) -> None:
    bad_csv = b"S. No.,Product Name\n1,Thing\n"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upload(stack.ingest_address, bad_csv)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = bad_request_details(caught.value)
    assert violations and violations[0].field.startswith("1:")
    assert "Input Image Urls" in violations[0].field


async def test_grpc_option_validation_and_status_codes(stack: RunningStack) -> None:
    csv_bytes = b"S. No.,Product Name,Input Image Urls\n1,A,https://example.com/a.jpg\n"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upload(stack.ingest_address, csv_bytes,
                     options=options_pb2.ProcessingOptions(quality=120))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    for request_id, code in ((str(uuid.uuid4()), grpc.StatusCode.NOT_FOUND),
                             ("nope", grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get_status(stack.status_address, request_id)
        assert caught.value.code() == code

    for address in (stack.ingest_address, stack.status_address):
        async with grpc.aio.insecure_channel(address) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_two_workers_share_the_load_and_redelivery_duplicates_nothing(
        stack: RunningStack, corpus_server: CorpusHttpServer) -> None:
    photos = ["rocket.jpg", "coffee.png", "chelsea.png", "camera.png", "logo.png"]
    rows = [f'{n},Item {n},"{corpus_server.url(f"photos/{photos[n % 5]}")}?copy={n}"'
            for n in range(1, 41)]
    csv_bytes = ("S. No.,Product Name,Input Image Urls\n" + "\n".join(rows) + "\n").encode()
    answer = await upload(stack.ingest_address, csv_bytes)
    status = await wait_until_terminal(stack.status_address, answer.request_id)
    assert (status.completed, status.failed) == (40, 0)

    engine = create_engine(stack.settings.storage.resolved_database_url)
    sessions = session_factory(engine)
    try:
        async with sessions() as session:
            workers = set((await session.scalars(
                select(ImageRecord.worker).where(
                    ImageRecord.request_id == answer.request_id))).all())
        assert len(workers) == 2, f"one worker did everything: {workers}"

        # Re-publish every job under new message ids, as a redelivery after a lost ack would.
        client = await nats.connect(stack.settings.nats.url or "")
        try:
            js = client.jetstream()
            for image in status.images:
                job = ImageJob(request_id=answer.request_id, image_id=image.image_id,
                               url=image.input_url)
                await js.publish(jobs_subject(answer.request_id), job.model_dump_json().encode(),
                                 headers={"Nats-Msg-Id": f"{job.message_id}.again"})
            deadline = time.monotonic() + 30
            while True:
                info = await js.consumer_info(JOBS_STREAM, WORKERS_DURABLE)
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    break
                assert time.monotonic() < deadline, "redelivered jobs were never settled"
                await asyncio.sleep(0.1)
        finally:
            await client.close()

        async with sessions() as session:
            count = await session.scalar(select(func.count()).select_from(ImageRecord).where(
                ImageRecord.request_id == answer.request_id))
        assert count == 40
    finally:
        await engine.dispose()
    again = await get_status(stack.status_address, answer.request_id)
    assert (again.total, again.completed, again.failed, again.version) == (
        40, 40, 0, status.version)
    files = list((stack.settings.storage.images_dir / answer.request_id).iterdir())
    assert len(files) == 40


async def test_webhook_receives_the_signed_status_when_the_request_finishes(
        stack: RunningStack, corpus_server: CorpusHttpServer, corpus_dir: Path) -> None:
    with WebhookReceiver() as receiver:
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
            response = await client.post(
                "/upload/", files={"file": ("products.csv",
                                            products_csv(corpus_dir, corpus_server.port))},
                data={"webhook_url": receiver.url("/pixpipe")})
            assert response.status_code == 200, response.text
            request_id = response.json()["request_id"]
            post = await asyncio.to_thread(receiver.wait_for_success, 60.0)
            # The notifier records the attempt once the receiver has answered.
            deadline = time.monotonic() + 30
            while (status := (await client.get(f"/status/{request_id}")).json())[
                    "webhook"]["state"] != "delivered":
                assert time.monotonic() < deadline, status["webhook"]
                await asyncio.sleep(0.05)
    assert stack.settings.webhooks.secret
    verify(post.headers, post.body, stack.settings.webhooks.secret)
    body = json.loads(post.body)
    assert body["request_id"] == request_id and body["status"] == "completed"
    assert (body["completed"], body["failed"]) == (12, 2)
    assert post.path == "/pixpipe"
    assert status["webhook"]["url"] == receiver.url("/pixpipe")
    assert status["webhook"]["state"] == "delivered"
    assert status["webhook"]["attempts"] == 1 and status["webhook"]["last_status_code"] == 200
