"""The ``pixpipe`` command against a live stack, run as a user would run it."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from pixpipe.embedded_nats import free_port
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
    assert rows[0][-1] == "Output Image Urls" and len(rows) == 8


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
