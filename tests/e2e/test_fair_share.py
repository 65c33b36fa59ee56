"""Fair share: a small request is served beside a big one that holds every worker slot."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from pixpipe.v1 import status_pb2
from tests.support.http_server import CorpusHttpServer, Exchange
from tests.support.infrastructure import NatsServer
from tests.support.stack import (
    RunningStack,
    get_status,
    stack_in,
    upload,
    wait_until_terminal,
)

BIG_REQUEST_IMAGES = 2_000  # past the express lane's 1,000
SMALL_REQUEST_IMAGES = 10
SMALL_REQUEST_BUDGET_SECONDS = 15.0


@pytest.fixture(scope="module")
def fair_stack(tmp_path_factory: pytest.TempPathFactory, database_url: str,
               nats_server: NatsServer) -> Iterator[RunningStack]:
    with stack_in(tmp_path_factory, "stack-fair", database_url=database_url,
                  nats_url=nats_server.url, workers=1,
                  PIXPIPE_FETCH_TIMEOUT_SECONDS="60") as running:
        yield running


def csv_of(urls: list[str]) -> bytes:
    rows = "".join(f"{serial},Product {serial},{url}\n" for serial, url in enumerate(urls, 1))
    return f"S. No.,Product Name,Input Image Urls\n{rows}".encode()


async def test_a_small_request_is_not_queued_behind_a_big_one(
        fair_stack: RunningStack, corpus_server: CorpusHttpServer) -> None:
    released = threading.Event()
    held = 0

    def hold(exchange: Exchange) -> None:
        # Every image of the big request waits here: its worker's slots stay taken.
        nonlocal held
        held += 1
        released.wait(120)
        exchange.send(404, b"gone")

    slow = corpus_server.route(f"/held-{uuid.uuid4().hex}.jpg", hold)
    big = await upload(fair_stack.ingest_address, csv_of(
        [f"{slow}?image={index}" for index in range(BIG_REQUEST_IMAGES)]))
    try:
        async with asyncio.timeout(30):
            # Every slot of the worker is held by the big one (counted in the server's threads).
            while held < fair_stack.settings.jobs.worker_concurrency:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        started = time.monotonic()
        small = await upload(fair_stack.ingest_address, csv_of(
            [corpus_server.url(f"photos/logo.png?small={index}")
             for index in range(SMALL_REQUEST_IMAGES)]))
        finished = await wait_until_terminal(fair_stack.status_address, small.request_id,
                                             timeout=SMALL_REQUEST_BUDGET_SECONDS)
        took = time.monotonic() - started
        print(f"10-image request finished in {took:.1f} s beside a "
              f"{BIG_REQUEST_IMAGES}-image one")
        assert finished.completed == SMALL_REQUEST_IMAGES

        running = await get_status(fair_stack.status_address, big.request_id)
        assert running.status == status_pb2.REQUEST_STATE_PROCESSING
        assert running.completed + running.failed < BIG_REQUEST_IMAGES // 10
    finally:
        released.set()
