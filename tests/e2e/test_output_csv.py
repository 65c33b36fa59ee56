"""The output CSV through the REST shim: a round trip a catalogue team would make."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from PIL import Image

from tests.support.http_server import CorpusHttpServer
from tests.support.stack import RunningStack, products_csv, wait_until_terminal


async def test_output_csv_round_trip(stack: RunningStack, corpus_server: CorpusHttpServer,
                                     corpus_dir: Path) -> None:
    source = products_csv(corpus_dir, corpus_server.port)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        upload = await client.post("/upload/", files={"file": ("products.csv", source)})
        request_id = upload.json()["request_id"]
        await wait_until_terminal(stack.status_address, request_id)
        response = await client.get(f"/status/{request_id}/csv")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        output = list(csv.reader(io.StringIO(response.text)))
        uploaded = list(csv.reader(io.StringIO(source.decode())))
        assert output[0] == [*uploaded[0], "Output Image Urls", "Output Quality",
                             "Output Encoder", "Output Scores"]
        assert [row[:-4] for row in output[1:]] == uploaded[1:]
        downloaded = 0
        for in_row, out_row in zip(uploaded[1:], output[1:], strict=True):
            inputs = [url.strip() for url in in_row[2].split(",")]
            outputs, qualities, encoders, scores = (cell.split(",") for cell in out_row[-4:])
            assert len(outputs) == len(inputs), "positions must line up with the inputs"
            assert len(qualities) == len(encoders) == len(scores) == len(inputs)
            for input_url, output_url, quality, encoder, score in zip(
                    inputs, outputs, qualities, encoders, scores, strict=True):
                failed = input_url.endswith(("broken.png", "missing.jpg"))
                assert (output_url == "") == failed
                assert score == ""  # a fixed quality without measure_quality
                assert failed or (quality == "50") == (encoder != "")  # or the source kept
                if failed:
                    continue
                base_url = stack.settings.network.public_base_url
                assert output_url.startswith(base_url + "/processed_images/")
                image = await client.get(output_url.removeprefix(base_url))
                assert image.status_code == 200
                with Image.open(io.BytesIO(image.content)) as decoded:
                    decoded.load()
                downloaded += 1
        assert downloaded == 12

        recent = (await client.get("/requests", params={"limit": 5})).json()["requests"]
        assert recent[0]["request_id"] == request_id
        assert recent[0]["status"] == "completed" and recent[0]["file_name"] == "products.csv"


async def test_output_csv_is_a_conflict_until_the_request_finishes(
        stack: RunningStack, corpus_server: CorpusHttpServer, corpus_dir: Path) -> None:
    photo = (corpus_dir / "photos" / "rocket.jpg").read_bytes()

    def trickle() -> Iterator[bytes]:
        for start in range(0, len(photo), 8192):
            time.sleep(0.1)
            yield photo[start:start + 8192]

    url = corpus_server.stream("/trickle.jpg", trickle)
    source = f"S. No.,Product Name,Input Image Urls\n1,Slow,{url}\n".encode()
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        request_id = (await client.post("/upload/", files={"file": ("s.csv", source)})).json()[
            "request_id"]
        early = await client.get(f"/status/{request_id}/csv")
        assert early.status_code == 409
        assert early.json()["error"]["status"] == "FAILED_PRECONDITION"
        await wait_until_terminal(stack.status_address, request_id)
        late = await client.get(f"/status/{request_id}/csv")
        assert late.status_code == 200 and "/processed_images/" in late.text
