"""The gateway's refusals of abusive input: oversized or too many uploads, too many event
streams, foreign Host headers and spoofed request targets."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from pixpipe.csv_input import parse_products_csv
from pixpipe.db.repository import Repository
from pixpipe.dev.embedded_nats import free_port
from pixpipe.domain import RequestOptions
from pixpipe.settings import Settings
from pixpipe_services.gateway.app import create_app
from pixpipe_services.notifier.main import Notifier

BOUNDARY = "pixpipe-test-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
CSV = (b"S. No.,Product Name,Input Image Urls\n"
       b'1,Lamp,"https://img.example/a.jpg,https://img.example/b.jpg"\n')


def in_process(app: FastAPI, host: str = "localhost") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}")


def part_head(name: str = "file", file_name: str = "big.csv") -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{file_name}"\r\nContent-Type: text/csv\r\n\r\n').encode()


class EndlessBody:
    """A multipart body that never ends, counting the bytes the server has pulled."""

    def __init__(self, chunk: int = 16 * 1024, cap: int = 20 * 1024 * 1024) -> None:
        self.chunk, self.cap, self.pulled = chunk, cap, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield part_head()
        while self.pulled < self.cap:  # bounded, so a broken limit fails instead of hanging
            self.pulled += self.chunk
            yield b"9" * self.chunk


async def test_an_upload_past_the_size_limit_is_refused_while_it_streams(
        make_settings: Callable[..., Settings]) -> None:
    limit = 100_000
    body = EndlessBody()
    async with in_process(create_app(make_settings(max_upload_bytes=limit))) as client:
        refused = await client.post("/upload/", content=body,
                                    headers={"Content-Type": MULTIPART})
    assert refused.status_code == 413
    assert refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert str(limit) in refused.json()["error"]["message"]
    # Refused within a chunk of the limit (plus the multipart allowance), not at the end.
    assert body.pulled < limit + 64 * 1024 + 2 * body.chunk


async def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(
        make_settings: Callable[..., Settings]) -> None:
    body = EndlessBody()
    async with in_process(create_app(make_settings(max_upload_bytes=100_000))) as client:
        refused = await client.post("/upload/", content=body, headers={
            "Content-Type": MULTIPART, "Content-Length": str(10**9)})
    assert refused.status_code == 413
    assert body.pulled == 0


async def test_uploads_past_the_concurrency_limit_are_told_to_retry(
        make_settings: Callable[..., Settings]) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def held_body() -> AsyncIterator[bytes]:
        # An option the gateway refuses itself, so the upload never needs the ingest service.
        yield (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="quality"\r\n\r\n'
               f"120\r\n").encode() + part_head()
        started.set()
        await release.wait()
        yield CSV + f"\r\n--{BOUNDARY}--\r\n".encode()

    app = create_app(make_settings(gateway_max_concurrent_uploads=1))
    async with in_process(app) as client:
        first = asyncio.create_task(client.post("/upload/", content=held_body(),
                                                headers={"Content-Type": MULTIPART}))
        await started.wait()
        refused = await client.post("/upload/", files={"file": ("a.csv", CSV)})
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) > 0
        assert refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
        release.set()
        assert (await first).status_code == 400
        # The slot is given back once the first upload is answered.
        again = await client.post("/upload/", files={"file": ("a.csv", CSV)},
                                  data={"quality": "120"})
        assert again.status_code == 400


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """The app behind a real uvicorn server on a free loopback port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        assert time.monotonic() < deadline, "uvicorn did not start in 10 s"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)


@pytest.fixture
async def notifier(make_settings: Callable[..., Settings]) -> AsyncIterator[Notifier]:
    running = Notifier(make_settings(status_port=0))
    await running.start()
    yield running
    await running.stop(0)


async def pending_request(repository: Repository) -> str:
    request_id, _jobs = await repository.create_request(
        parse_products_csv(CSV), options=RequestOptions(), webhook_url=None, file_name="w.csv")
    return request_id


@contextlib.asynccontextmanager
async def open_stream(client: httpx.AsyncClient, request_id: str,
                      ) -> AsyncIterator[httpx.Response]:
    async with client.stream("GET", f"/status/{request_id}/events") as response:
        if response.status_code != 200:
            await response.aread()
            yield response
            return
        # The first event is the snapshot: the stream is established and holds its slots.
        # The line iterator is kept until the end: dropping it would close the connection.
        lines = response.aiter_lines()
        while not (line := await anext(lines)).startswith("event:"):
            pass
        assert line == "event: snapshot"
        yield response


async def test_event_streams_past_the_per_request_and_per_client_caps_are_refused(
        make_settings: Callable[..., Settings], notifier: Notifier,
        repository: Repository) -> None:
    first, second, third = [await pending_request(repository) for _ in range(3)]
    app = create_app(make_settings(status_address=f"127.0.0.1:{notifier.port}",
                                   gateway_max_streams_per_request=2,
                                   gateway_max_streams_per_client=3))
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        async with open_stream(client, first) as one, open_stream(client, first) as two:
            assert (one.status_code, two.status_code) == (200, 200)
            async with open_stream(client, first) as refused:
                assert refused.status_code == 429
                assert int(refused.headers["Retry-After"]) > 0
                assert refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
            async with open_stream(client, second) as three:
                assert three.status_code == 200
                async with open_stream(client, third) as refused:
                    assert refused.status_code == 429
                    assert "client" in refused.json()["error"]["message"]
        # Closed streams give their slots back (once the server has seen them go).
        deadline = time.monotonic() + 10
        while True:
            async with open_stream(client, third) as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the closed streams kept their slots"
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:1",
                                  "[::1]:8000", "pixpipe.example"])
async def test_a_loopback_gateway_answers_its_own_host_names(
        make_settings: Callable[..., Settings], host: str) -> None:
    app = create_app(make_settings(public_base_url="https://pixpipe.example"))
    async with in_process(app, host) as client:
        assert (await client.get("/healthz")).status_code == 200


@pytest.mark.parametrize("host", ["rebound.example", "rebound.example:8000", "127.0.0.2",
                                  "localhost.rebound.example", "[::2]"])
async def test_a_loopback_gateway_refuses_other_host_names(
        make_settings: Callable[..., Settings], host: str) -> None:
    async with in_process(create_app(make_settings()), host) as client:
        assert (await client.get("/healthz")).status_code == 400


async def test_allowed_hosts_replaces_the_loopback_list_and_a_public_bind_has_none(
        make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(allowed_hosts=["pixpipe.example"]))
    async with in_process(app, "pixpipe.example") as client:
        assert (await client.get("/healthz")).status_code == 200
    async with in_process(app, "localhost") as client:
        assert (await client.get("/healthz")).status_code == 400
    async with in_process(create_app(make_settings(bind_host="0.0.0.0")),
                          "pixpipe.example") as client:
        assert (await client.get("/healthz")).status_code == 200


async def raw_request(url: str, request_line: str, host: str) -> tuple[int, bytes]:
    """Sends one HTTP/1.1 request as written, for request-targets httpx would normalise."""
    address = httpx.URL(url)
    reader, writer = await asyncio.open_connection(address.host, address.port)
    writer.write(f"{request_line}\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_a_spoofed_host_or_request_target_cannot_reach_a_guarded_route(
        make_settings: Callable[..., Settings]) -> None:
    guarded = create_app(make_settings(api_token="s3cret"))
    open_to_any_host = create_app(make_settings(api_token="s3cret", allowed_hosts=["*"]))
    for app, refusal in ((guarded, 400), (open_to_any_host, 401)):
        async with serving(app) as url:
            for host in ("localhost/healthz?", "localhost/static/#", "localhost@evil/healthz"):
                status, _ = await raw_request(url, "GET /requests HTTP/1.1", host)
                assert status == refusal, (host, status)
            for target in ("http://localhost/healthz/../requests",
                           "http://localhost/requests", "@localhost/healthz/../requests"):
                status, body = await raw_request(url, f"GET {target} HTTP/1.1", "localhost")
                assert status in (400, 401, 404), (target, status)
                assert b'"requests"' not in body
