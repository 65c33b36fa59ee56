"""effort travels from REST and gRPC to the codec, and every image reports its receipt."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from pixpipe.db.engine import create_engine, session_factory
from pixpipe.db.models import ImageRecord
from pixpipe.v1 import options_pb2
from tests.support.http_server import CorpusHttpServer
from tests.support.stack import RunningStack, upload, wait_until_terminal

PHOTOS = ["product-photos/darkest-hour.jpg", "product-photos/grey.jpg", "photos/coffee.png"]


def effort_csv(server: CorpusHttpServer, tag: str) -> bytes:
    urls = ",".join(server.url(f"{path}?{tag}") for path in PHOTOS)
    return f'S. No.,Product Name,Input Image Urls\n1,SKU1,"{urls}"\n'.encode()


async def rest_status(stack: RunningStack, request_id: str) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        response = await client.get(f"/status/{request_id}")
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        return body


async def test_effort_max_over_rest_and_fast_over_grpc(
        stack: RunningStack, corpus_server: CorpusHttpServer) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        response = await client.post(
            "/upload/", files={"file": ("p.csv", effort_csv(corpus_server, "max"))},
            data={"effort": "max", "quality": "60"})
        assert response.status_code == 200, response.text
        max_id = response.json()["request_id"]
        refused = await client.post(
            "/upload/", files={"file": ("p.csv", effort_csv(corpus_server, "bad"))},
            data={"effort": "extreme"})
        assert refused.status_code in (400, 422)
    fast = await upload(stack.ingest_address, effort_csv(corpus_server, "fast"),
                        options=options_pb2.ProcessingOptions(effort=options_pb2.EFFORT_FAST))

    sizes: dict[str, dict[str, int]] = {}
    for request_id, effort, encoder, quality in ((max_id, "max", "mozjpeg", 60),
                                                 (fast.request_id, "fast", "libjpeg-turbo", 50)):
        await wait_until_terminal(stack.status_address, request_id)
        status = await rest_status(stack, request_id)
        assert status["status"] == "completed"
        assert status["options"]["effort"] == effort  # type: ignore[index]
        images = status["images"]
        assert isinstance(images, list) and len(images) == len(PHOTOS)
        for image in images:
            assert image["status"] == "completed"
            assert (image["quality_used"], image["encoder"], image["effort"]) == (
                quality, encoder, effort)
            assert image["score"] is None
        sizes[effort] = {image["input_url"]: image["bytes_out"] for image in images}

    engine = create_engine(stack.settings.storage.resolved_database_url)
    try:
        async with session_factory(engine)() as session:
            stored = (await session.execute(
                select(ImageRecord.effort, ImageRecord.encoder, ImageRecord.quality_used)
                .where(ImageRecord.request_id == max_id))).all()
    finally:
        await engine.dispose()
    assert [tuple(row) for row in stored] == [("max", "mozjpeg", 60)] * len(PHOTOS)
    # max at quality 60 still comes out smaller than fast at 50 on the 4 MP photos.
    for path in PHOTOS[:2]:
        by_name = {effort: next(size for url, size in urls.items() if path in url)
                   for effort, urls in sizes.items()}
        assert by_name["max"] < by_name["fast"]
