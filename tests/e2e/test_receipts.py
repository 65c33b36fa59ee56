"""format=auto and measure_quality over REST: each image's receipt names what made it."""

from __future__ import annotations

import csv
import io

import httpx

from tests.support.http_server import CorpusHttpServer
from tests.support.stack import RunningStack, wait_until_terminal

EXTENSIONS = {"libjpeg-turbo": ".jpg", "libwebp": ".webp", "libavif": ".avif"}


async def test_format_auto_and_measure_quality_report_per_image(
        stack: RunningStack, corpus_server: CorpusHttpServer) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
        ids = {}
        for tag, form in (("auto", {"format": "auto"}),
                          ("measured", {"quality": "60", "measure_quality": "true"})):
            url = corpus_server.url(f"photos/rocket.jpg?{tag}")
            answer = await client.post(
                "/upload/", data=form,
                files={"file": ("p.csv", f"S. No.,Product Name,Input Image Urls\n1,P,{url}\n")})
            assert answer.status_code == 200, answer.text
            ids[tag] = answer.json()["request_id"]
        for request_id in ids.values():
            await wait_until_terminal(stack.status_address, request_id)

        auto = (await client.get(f"/status/{ids['auto']}")).json()
        assert auto["options"]["format"] == "auto"
        [image] = auto["images"]
        assert image["status"] == "completed" and image["score"] is not None
        assert image["output_url"].endswith(EXTENSIONS[image["encoder"]])

        measured = (await client.get(f"/status/{ids['measured']}")).json()
        assert measured["options"]["measure_quality"] is True
        [image] = measured["images"]
        assert (image["quality_used"], image["encoder"]) == (60, "libjpeg-turbo")
        assert image["score"] is not None
        rows = list(csv.DictReader(io.StringIO(
            (await client.get(f"/status/{ids['measured']}/csv")).text)))
        assert rows[0]["Output Quality"] == "60"
        assert float(rows[0]["Output Scores"]) == round(image["score"], 1)
