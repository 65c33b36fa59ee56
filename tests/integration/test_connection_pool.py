"""KeepAlivePool against a real loopback HTTP server: reuse, limits, expiry, early closes."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator

import httpcore
import pytest

from pixpipe.asyncio_network import AsyncioBackend
from pixpipe.connection_pool import KeepAlivePool
from tests.support.http_server import CorpusHttpServer
from tests.support.paths import corpus_root
from tests.support.pooled_get import get

ROCKET = corpus_root() / "photos" / "rocket.jpg"


@pytest.fixture
def http_server() -> Iterator[CorpusHttpServer]:
    with CorpusHttpServer() as running:
        yield running


def new_pool(**limits: float) -> KeepAlivePool:
    return KeepAlivePool(AsyncioBackend(), ssl_context=ssl.create_default_context(),
                         **limits)  # type: ignore[arg-type]


@pytest.fixture
async def pool() -> AsyncIterator[KeepAlivePool]:
    pool = new_pool()
    yield pool
    await pool.aclose()


async def test_requests_one_after_another_share_one_connection(
        http_server: CorpusHttpServer, pool: KeepAlivePool) -> None:
    responses = [await get(pool, http_server.url("photos/rocket.jpg")) for _ in range(5)]

    assert all(response.body == ROCKET.read_bytes() for response in responses)
    assert len({id(response.stream) for response in responses}) == 1
    assert pool.idle_connections == 1


async def test_concurrent_requests_get_a_connection_each_and_idle_ones_are_capped(
        http_server: CorpusHttpServer) -> None:
    pool = new_pool(max_idle=3)
    try:
        responses = await asyncio.gather(*(get(pool, http_server.url("photos/rocket.jpg"))
                                           for _ in range(8)))
        assert len({id(response.stream) for response in responses}) == 8
        assert pool.idle_connections == 3
        # The kept ones are reused; the others were closed.
        again = await asyncio.gather(*(get(pool, http_server.url("photos/rocket.jpg"))
                                       for _ in range(3)))
        assert {id(response.stream) for response in again} <= {
            id(response.stream) for response in responses}
    finally:
        await pool.aclose()


async def test_each_origin_has_its_own_connections(pool: KeepAlivePool) -> None:
    with CorpusHttpServer() as first, CorpusHttpServer() as second:
        one = await get(pool, first.url("photos/rocket.jpg"))
        other = await get(pool, second.url("photos/rocket.jpg"))
        one_again = await get(pool, first.url("photos/rocket.jpg"))

    assert other.stream is not one.stream
    assert one_again.stream is one.stream
    assert len(first.requests) == 2 and len(second.requests) == 1


async def test_a_connection_past_its_keepalive_expiry_is_not_reused(
        http_server: CorpusHttpServer) -> None:
    pool = new_pool(keepalive_expiry=0.0)
    try:
        first = await get(pool, http_server.url("photos/rocket.jpg"))
        second = await get(pool, http_server.url("photos/rocket.jpg"))
    finally:
        await pool.aclose()

    assert second.stream is not first.stream
    assert second.body == ROCKET.read_bytes()


async def test_a_response_closed_before_its_end_does_not_return_its_connection(
        http_server: CorpusHttpServer, pool: KeepAlivePool) -> None:
    unread = await get(pool, http_server.url("photos/rocket.jpg"), read_body=False)
    assert pool.idle_connections == 0

    after = await get(pool, http_server.url("photos/rocket.jpg"))
    assert after.stream is not unread.stream
    assert after.body == ROCKET.read_bytes()


async def test_a_failed_connection_is_not_kept(pool: KeepAlivePool) -> None:
    server = CorpusHttpServer()
    server.start()
    url = server.url("photos/rocket.jpg")
    server.stop()

    with pytest.raises(httpcore.ConnectError):
        await get(pool, url)
    assert pool.idle_connections == 0


async def test_closing_the_pool_closes_its_idle_connections(
        http_server: CorpusHttpServer) -> None:
    pool = new_pool()
    response = await get(pool, http_server.url("photos/rocket.jpg"))
    assert pool.idle_connections == 1

    await pool.aclose()

    assert pool.idle_connections == 0
    assert response.stream.get_extra_info("socket").fileno() == -1
