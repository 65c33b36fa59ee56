"""The ``pixpipe`` command against a live stack, run as a user would run it."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pixpipe.dev.embedded_nats import free_port
from tests.support.http_server import CorpusHttpServer
from tests.support.stack import RunningStack, products_csv


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


async def pixpipe(stack: RunningStack | None, *args: str, limit: float = 120) -> Result:
    servers = (["--server", stack.ingest_address, "--status-server", stack.status_address]
               if stack else [])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pixpipe.cli.main", *servers, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"})
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=limit)
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())


def good_csv(server: CorpusHttpServer) -> bytes:
    rows = [f"{n},Item {n},{server.url(f'photos/rocket.jpg?cli={n}')}" for n in range(1, 7)]
    return ("S. No.,Product Name,Input Image Urls\n" + "\n".join(rows) + "\n").encode()


async def test_submit_and_watch_until_done(stack: RunningStack, corpus_server: CorpusHttpServer,
                                           tmp_path: Path) -> None:
    csv_file = tmp_path / "good.csv"
    csv_file.write_bytes(good_csv(corpus_server))
    result = await pixpipe(stack, "submit", str(csv_file), "--quality", "40", "--watch")
    assert result.code == 0, result.stderr
    assert "6 of 6 images compressed, 0 failed" in result.stderr
    assert "Traceback" not in result.stderr


async def test_partly_failed_request_exits_1_with_the_reasons(
        stack: RunningStack, corpus_server: CorpusHttpServer, corpus_dir: Path,
        tmp_path: Path) -> None:
    csv_file = tmp_path / "products.csv"
    csv_file.write_bytes(products_csv(corpus_dir, corpus_server.port))
    submitted = await pixpipe(stack, "submit", str(csv_file))
    assert submitted.code == 0
    request_id = submitted.stdout.strip()
    assert uuid.UUID(request_id)

    watched = await pixpipe(stack, "watch", request_id)
    assert watched.code == 1
    assert "12 of 14 images compressed, 2 failed" in watched.stderr
    assert "HTTP 404 from source" in watched.stderr and "corrupt PNG data" in watched.stderr

    as_json = await pixpipe(stack, "status", request_id, "--json")
    assert as_json.code == 1 and '"failed": 2' in as_json.stdout

    output = tmp_path / "out.csv"
    written = await pixpipe(stack, "output", request_id, "-o", str(output))
    assert written.code == 0, written.stderr
    rows = list(csv.reader(io.StringIO(output.read_text())))
    assert "Output Image Urls" in rows[0] and len(rows) == 8


async def test_unknown_request_and_bad_input_exit_2_with_one_line(
        stack: RunningStack, tmp_path: Path) -> None:
    unknown = await pixpipe(stack, "status", str(uuid.uuid4()))
    assert unknown.code == 2
    assert "no such request" in unknown.stderr and "Traceback" not in unknown.stderr

    bad = tmp_path / "bad.csv"
    bad.write_text("S. No.,Product Name,Input Image Urls\n0,,ftp://x/y.jpg\n")
    refused = await pixpipe(stack, "submit", str(bad))
    assert refused.code == 2
    assert "line 2, column 1" in refused.stderr and "Traceback" not in refused.stderr

    missing = await pixpipe(stack, "submit", str(tmp_path / "nope.csv"))
    assert missing.code == 2 and "no such file" in missing.stderr

    usage = await pixpipe(stack, "frobnicate")
    assert usage.code == 2


async def test_server_down_exits_2(tmp_path: Path) -> None:
    port = free_port()
    result = await pixpipe(None, "--server", f"127.0.0.1:{port}", "--status-server",
                           f"127.0.0.1:{port}", "status", str(uuid.uuid4()), limit=60)
    assert result.code == 2
    assert "cannot reach pixpipe" in result.stderr
    assert "Traceback" not in result.stderr


# A catalogue-sized request: 500 products of 5 images, all but a few answering 404.
CATALOGUE_PRODUCTS, CATALOGUE_URLS = 500, 5
CATALOGUE_REAL = {(1, 0): "rocket.jpg", (2, 3): "coffee.png", (250, 4): "retina.jpg"}
CATALOGUE_FAILED = CATALOGUE_PRODUCTS * CATALOGUE_URLS - len(CATALOGUE_REAL)


@dataclass
class Catalogue:
    request_id: str
    watched: Result


def catalogue_csv(server: CorpusHttpServer) -> bytes:
    def url(serial: int, position: int) -> str:
        photo = CATALOGUE_REAL.get((serial, position))
        return server.url(f"photos/{photo}?catalogue={serial}" if photo
                          else f"missing/{serial}-{position}.jpg")

    rows = [f'{serial},Item {serial},"' + ",".join(url(serial, k)
                                                   for k in range(CATALOGUE_URLS)) + '"'
            for serial in range(1, CATALOGUE_PRODUCTS + 1)]
    return ("S. No.,Product Name,Input Image Urls\n" + "\n".join(rows) + "\n").encode()


@pytest.fixture(scope="module")
async def catalogue(stack: RunningStack, corpus_server: CorpusHttpServer,
                    tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Catalogue]:
    csv_file = tmp_path_factory.mktemp("catalogue") / "catalogue.csv"
    csv_file.write_bytes(catalogue_csv(corpus_server))
    watched = await pixpipe(stack, "submit", str(csv_file), "--watch", limit=170)
    found = re.search(r"request ([0-9a-f-]{36}) (completed|failed):", watched.stderr)
    assert found, watched.stderr[-2000:]
    yield Catalogue(request_id=found.group(1), watched=watched)


def image_rows(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    assert lines[0].startswith("S. No.\tPosition\tStatus")
    return [line.split("\t") for line in lines[1:]]


async def test_watching_a_catalogue_lists_the_first_failures_only(
        catalogue: Catalogue) -> None:
    watched = catalogue.watched
    assert watched.code == 1, watched.stderr[-2000:]
    assert f"{len(CATALOGUE_REAL)} of 2500 images compressed, {CATALOGUE_FAILED} failed" in (
        watched.stderr)
    assert watched.stderr.count("HTTP 404 from source") == 20
    assert f"… and {CATALOGUE_FAILED - 20} more" in watched.stderr
    assert "Traceback" not in watched.stderr


async def test_status_of_a_catalogue_is_a_summary(stack: RunningStack,
                                                  catalogue: Catalogue) -> None:
    shown = await pixpipe(stack, "status", catalogue.request_id)
    assert shown.code == 1 and shown.stdout == ""
    assert (f"2500 in all: {len(CATALOGUE_REAL)} completed, {CATALOGUE_FAILED} failed, "
            "0 in progress") in shown.stderr
    assert "created" in shown.stderr and "finished" in shown.stderr
    assert shown.stderr.count("HTTP 404 from source") == 20
    assert f"… and {CATALOGUE_FAILED - 20} more" in shown.stderr

    as_json = await pixpipe(stack, "status", catalogue.request_id, "--json")
    body = json.loads(as_json.stdout)
    assert as_json.code == 1 and body["total"] == 2500 and body["in_progress"] == 0
    assert len(body["images"]) == 1000 and body["next_page_token"]


async def test_failed_all_lists_every_failed_image_once(stack: RunningStack,
                                                        catalogue: Catalogue) -> None:
    listed = await pixpipe(stack, "status", catalogue.request_id, "--failed", "--all",
                           "--limit", "700")
    assert listed.code == 1, listed.stderr
    rows = image_rows(listed.stdout)
    keys = [(int(row[0]), int(row[1])) for row in rows]
    expected = [(serial, position) for serial in range(1, CATALOGUE_PRODUCTS + 1)
                for position in range(CATALOGUE_URLS) if (serial, position) not in CATALOGUE_REAL]
    assert keys == expected
    assert {row[2] for row in rows} == {"failed"}
    assert {row[5] for row in rows} == {"HTTP 404 from source"}
    assert f"{CATALOGUE_FAILED} failed image(s) listed" in listed.stderr

    as_lines = await pixpipe(stack, "status", catalogue.request_id, "--images", "--all",
                             "--json")
    images = [json.loads(line) for line in as_lines.stdout.splitlines()]
    assert len(images) == 2500
    assert len({(image["serial_number"], image["position"]) for image in images}) == 2500
    assert sum(image["status"] == "completed" for image in images) == len(CATALOGUE_REAL)


async def test_pages_follow_the_printed_tokens(stack: RunningStack,
                                               catalogue: Catalogue) -> None:
    seen: list[tuple[int, int]] = []
    token: list[str] = []
    for _ in range(3):
        page = await pixpipe(stack, "status", catalogue.request_id, "--images", "--limit",
                             "1000", *token)
        assert page.code == 1, page.stderr
        seen += [(int(row[0]), int(row[1])) for row in image_rows(page.stdout)]
        found = re.search(r"next page: --page-token (\S+)", page.stderr)
        token = ["--page-token", found.group(1)] if found else []
    assert not token
    assert len(seen) == 2500 and len(set(seen)) == 2500

    wrong = await pixpipe(stack, "status", catalogue.request_id, "--failed", "--page-token",
                          "bm90LWEtdG9rZW4")
    assert wrong.code == 2 and "page_token" in wrong.stderr
    bad_limit = await pixpipe(stack, "status", catalogue.request_id, "--limit", "5000")
    assert bad_limit.code == 2 and "--limit" in bad_limit.stderr


async def test_output_of_a_catalogue_has_a_row_per_product(
        stack: RunningStack, catalogue: Catalogue, tmp_path: Path) -> None:
    output = tmp_path / "catalogue-out.csv"
    written = await pixpipe(stack, "output", catalogue.request_id, "-o", str(output))
    assert written.code == 0, written.stderr
    rows = list(csv.reader(io.StringIO(output.read_text())))
    urls = rows[0].index("Output Image Urls")
    assert len(rows) == CATALOGUE_PRODUCTS + 1
    filled = {(int(row[0]), k) for row in rows[1:]
              for k, url in enumerate(row[urls].split(",")) if url}
    assert filled == set(CATALOGUE_REAL)
