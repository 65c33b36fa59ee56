"""The asyncio network backend under httpcore, against real loopback HTTP and HTTPS servers."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator

import httpcore
import pytest
import trustme

from pixpipe.asyncio_network import AsyncioBackend
from pixpipe.connection_pool import KeepAlivePool
from pixpipe.errors import FetchError
from pixpipe.fetcher import FetchPolicy, SafeFetcher
from tests.support.http_server import CorpusHttpServer
from tests.support.paths import corpus_root
from tests.support.pooled_get import get

ROCKET = corpus_root() / "photos" / "rocket.jpg"


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def https_server(authority: trustme.CA) -> Iterator[CorpusHttpServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(context)
    with CorpusHttpServer(host="localhost", tls=context) as running:
        yield running


@pytest.fixture
def http_server() -> Iterator[CorpusHttpServer]:
    with CorpusHttpServer() as running:
        yield running


@pytest.fixture
async def trusting_pool(authority: trustme.CA) -> AsyncIterator[KeepAlivePool]:
    context = ssl.create_default_context()
    authority.configure_trust(context)
    pool = KeepAlivePool(AsyncioBackend(), ssl_context=context)
    yield pool
    await pool.aclose()


async def test_https_download_verifies_the_certificate_and_returns_every_byte(
    https_server: CorpusHttpServer, trusting_pool: KeepAlivePool,
) -> None:
    response = await get(trusting_pool, https_server.url("photos/rocket.jpg"))

    assert response.status == 200
    assert response.body == ROCKET.read_bytes()
    assert response.stream.get_extra_info("ssl_object") is not None


async def test_untrusted_certificate_fails_the_fetch_with_a_reason(
    https_server: CorpusHttpServer,
) -> None:
    # The fetcher trusts the public roots only; the test authority is not one of them.
    async with SafeFetcher(FetchPolicy(allow_private_networks=True)) as fetcher:
        with pytest.raises(FetchError) as caught:
            await fetcher.fetch(https_server.url("photos/rocket.jpg"))

    assert caught.value.reason == "could not connect to source"


async def test_connection_closed_by_the_server_while_idle_is_not_reused(
    http_server: CorpusHttpServer, trusting_pool: KeepAlivePool,
) -> None:
    first = await get(trusting_pool, http_server.url("photos/rocket.jpg"))
    assert first.status == 200
    assert trusting_pool.idle_connections == 1

    http_server.drop_connections()  # the server hangs up the idle keep-alive connection
    second = await get(trusting_pool, http_server.url("photos/rocket.jpg"))

    assert second.body == ROCKET.read_bytes()
    assert second.stream is not first.stream
    assert len(http_server.requests) == 2


async def test_refused_connection_is_a_connect_error(http_server: CorpusHttpServer) -> None:
    port = http_server.port
    http_server.stop()
    backend = AsyncioBackend()

    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("127.0.0.1", port, timeout=5)


async def test_read_timeout_is_httpcores_read_timeout(http_server: CorpusHttpServer) -> None:
    http_server.hang("/hang")
    stream = await AsyncioBackend().connect_tcp("127.0.0.1", http_server.port, timeout=5)
    try:
        await stream.write(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(httpcore.ReadTimeout):
            await stream.read(1024, timeout=0.2)
    finally:
        await stream.aclose()
