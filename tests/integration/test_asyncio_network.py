"""The asyncio network backend under httpcore, against real loopback HTTP and HTTPS servers."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator

import httpcore
import pytest
import trustme

from pixpipe.asyncio_network import AsyncioBackend
from pixpipe.errors import FetchError
from pixpipe.fetcher import FetchPolicy, SafeFetcher
from tests.support.http_server import CorpusHttpServer
from tests.support.paths import corpus_root

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
async def trusting_pool(authority: trustme.CA) -> AsyncIterator[httpcore.AsyncConnectionPool]:
    context = ssl.create_default_context()
    authority.configure_trust(context)
    async with httpcore.AsyncConnectionPool(ssl_context=context,
                                            network_backend=AsyncioBackend()) as pool:
        yield pool


async def test_https_download_verifies_the_certificate_and_returns_every_byte(
    https_server: CorpusHttpServer, trusting_pool: httpcore.AsyncConnectionPool,
) -> None:
    response = await trusting_pool.request("GET", https_server.url("photos/rocket.jpg"))

    assert response.status == 200
    assert response.content == ROCKET.read_bytes()
    assert response.extensions["network_stream"].get_extra_info("ssl_object") is not None


async def test_untrusted_certificate_fails_the_fetch_with_a_reason(
    https_server: CorpusHttpServer,
) -> None:
    # The fetcher trusts the public roots only; the test authority is not one of them.
    async with SafeFetcher(FetchPolicy(allow_private_networks=True)) as fetcher:
        with pytest.raises(FetchError) as caught:
            await fetcher.fetch(https_server.url("photos/rocket.jpg"))

    assert caught.value.reason == "could not connect to source"


async def test_connection_closed_by_the_server_while_idle_is_not_reused(
    http_server: CorpusHttpServer, trusting_pool: httpcore.AsyncConnectionPool,
) -> None:
    first = await trusting_pool.request("GET", http_server.url("photos/rocket.jpg"))
    assert first.status == 200
    assert len(trusting_pool.connections) == 1

    http_server.drop_connections()  # the server hangs up the idle keep-alive connection
    second = await trusting_pool.request("GET", http_server.url("photos/rocket.jpg"))

    assert second.content == ROCKET.read_bytes()
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
