"""The safe fetcher against real loopback HTTP servers."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import trustme

from pixpipe.errors import FetchError
from pixpipe.fetcher import SafeFetcher
from pixpipe.net_policy import IPAddress
from pixpipe.safe_transport import guarded_transport
from pixpipe.settings import FetchSettings, Settings
from tests.support.http_server import CorpusHttpServer, Exchange
from tests.support.paths import corpus_root

CORPUS = corpus_root()
ROCKET = CORPUS / "photos" / "rocket.jpg"
LOOPBACK_OPEN = FetchSettings(allow_private_networks=True, timeout_seconds=10.0)


@pytest.fixture
def server() -> Iterator[CorpusHttpServer]:
    with CorpusHttpServer(CORPUS) as running:
        yield running


@pytest.fixture
async def fetcher() -> AsyncIterator[SafeFetcher]:
    async with SafeFetcher(LOOPBACK_OPEN) as client:
        yield client


async def fetch_error(fetcher: SafeFetcher, url: str) -> FetchError:
    with pytest.raises(FetchError) as caught:
        await fetcher.fetch(url)
    return caught.value


def only_127_0_0_1(ip: IPAddress) -> bool:
    """Stands in for "public": the first loopback address plays an allowed internet host."""
    return ip == ipaddress.IPv4Address("127.0.0.1")


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("photos/rocket.jpg", "image/jpeg"),
        ("photos/astronaut.png", "image/png"),
        ("edge/flower.webp", "image/webp"),
        ("edge/hopper.gif", "image/gif"),
    ],
)
async def test_fetches_corpus_images_byte_for_byte(
    server: CorpusHttpServer, fetcher: SafeFetcher, path: str, content_type: str
) -> None:
    image = await fetcher.fetch(server.url(path))
    assert image.content == (CORPUS / path).read_bytes()
    assert image.content_type == content_type
    assert image.url == server.url(path)


async def test_sends_the_configured_user_agent(server: CorpusHttpServer) -> None:
    async with SafeFetcher(FetchSettings(allow_private_networks=True, user_agent="ua-test/1")) as f:
        await f.fetch(server.url("photos/rocket.jpg"))
    assert server.requests[-1].headers["User-Agent"] == "ua-test/1"


async def test_cookies_are_not_kept_between_fetches(
    server: CorpusHttpServer, fetcher: SafeFetcher
) -> None:
    body = ROCKET.read_bytes()
    url = server.respond("/cookie", body=body, headers={"Set-Cookie": "session=abc; Path=/"})
    await fetcher.fetch(url)
    await fetcher.fetch(url)
    assert "Cookie" not in server.requests[-1].headers


async def test_concurrent_fetches_share_one_client(
    server: CorpusHttpServer, fetcher: SafeFetcher
) -> None:
    urls = [server.url(f"photos/{name}") for name in ("rocket.jpg", "camera.png", "coffee.png")]
    images = await asyncio.gather(*(fetcher.fetch(url) for url in urls * 3))
    assert [len(i.content) for i in images] == [len(i.content) for i in images[:3]] * 3


async def test_the_fetch_settings_set_its_limits_and_user_agent(server: CorpusHttpServer) -> None:
    settings = Settings(allow_private_networks=True, max_image_bytes=1024, user_agent="s/1")
    async with SafeFetcher(settings.fetch) as f:
        error = await fetch_error(f, server.url("photos/rocket.jpg"))
    assert error.reason == "image larger than 1 KB"
    assert server.requests[-1].headers["User-Agent"] == "s/1"


async def test_loopback_is_refused_by_default(server: CorpusHttpServer) -> None:
    async with SafeFetcher(FetchSettings()) as f:
        error = await fetch_error(f, server.url("photos/rocket.jpg"))
    assert (error.reason, error.transient) == ("source address not allowed", False)
    assert server.requests == []  # refused before connecting


async def test_host_name_is_kept_while_the_checked_address_is_used(
    server: CorpusHttpServer,
) -> None:
    url = f"http://localhost:{server.port}/photos/rocket.jpg"
    async with SafeFetcher(FetchSettings(), is_address_allowed=lambda ip: ip.is_loopback) as f:
        image = await f.fetch(url)
    assert image.content == ROCKET.read_bytes()
    assert server.requests[-1].headers["Host"] == f"localhost:{server.port}"


async def test_follows_a_chain_of_three_redirects(
    server: CorpusHttpServer, fetcher: SafeFetcher
) -> None:
    server.redirect("/a", server.url("/b"), status=301)
    server.redirect("/b", "/c", status=307)  # relative
    server.redirect("/c", "photos/rocket.jpg", status=308)
    image = await fetcher.fetch(server.url("/a"))
    assert image.content == ROCKET.read_bytes()
    assert image.url == server.url("photos/rocket.jpg")
    assert [r.path for r in server.requests] == ["/a", "/b", "/c", "/photos/rocket.jpg"]


async def test_five_redirects_are_followed(server: CorpusHttpServer, fetcher: SafeFetcher) -> None:
    url = server.redirect_chain("/hop", 5, "/photos/rocket.jpg")
    assert (await fetcher.fetch(url)).content == ROCKET.read_bytes()


async def test_six_redirects_are_too_many(server: CorpusHttpServer, fetcher: SafeFetcher) -> None:
    url = server.redirect_chain("/hop", 6, "/photos/rocket.jpg")
    error = await fetch_error(fetcher, url)
    assert (error.reason, error.transient) == ("too many redirects", False)
    assert "/photos/rocket.jpg" not in [r.path for r in server.requests]


async def test_redirect_to_a_refused_address_is_blocked(server: CorpusHttpServer) -> None:
    # 127.0.0.2 is loopback too; the checker treats it as the private network behind the host.
    start = server.redirect("/start", f"http://127.0.0.2:{server.port}/photos/rocket.jpg")
    async with SafeFetcher(FetchSettings(), is_address_allowed=only_127_0_0_1) as f:
        assert (await f.fetch(server.url("photos/rocket.jpg"))).content == ROCKET.read_bytes()
        error = await fetch_error(f, start)
    assert (error.reason, error.transient) == ("source address not allowed", False)
    assert [r.path for r in server.requests] == ["/photos/rocket.jpg", "/start"]


@pytest.mark.parametrize(
    "location", ["ftp://127.0.0.1/a.jpg", "file:///etc/passwd", "data:image/png;base64,AAAA"]
)
async def test_redirect_to_a_non_http_url_is_refused(
    server: CorpusHttpServer, fetcher: SafeFetcher, location: str
) -> None:
    error = await fetch_error(fetcher, server.redirect("/away", location))
    assert (error.reason, error.transient) == ("redirect to a non-HTTP URL not allowed", False)


async def test_redirect_carrying_credentials_is_refused(
    server: CorpusHttpServer, fetcher: SafeFetcher
) -> None:
    url = server.redirect("/creds", f"http://user:pw@127.0.0.1:{server.port}/photos/rocket.jpg")
    error = await fetch_error(fetcher, url)
    assert error.reason == "invalid redirect URL: credentials in URLs are not allowed"
    assert error.transient is False


@pytest.mark.parametrize("url", ["ftp://img.example/a.jpg", "http:///a.jpg", "not a url"])
async def test_invalid_urls_are_refused_without_a_request(fetcher: SafeFetcher, url: str) -> None:
    error = await fetch_error(fetcher, url)
    assert error.reason.startswith("invalid URL: ")
    assert error.transient is False


async def test_declared_length_over_the_limit_is_refused(server: CorpusHttpServer) -> None:
    policy = FetchSettings(allow_private_networks=True, max_image_bytes=100 * 1024)
    async with SafeFetcher(policy) as f:
        error = await fetch_error(f, server.url("photos/rocket.jpg"))  # 112,525 bytes
    assert (error.reason, error.transient) == ("image larger than 100 KB", False)


async def test_streamed_body_over_the_limit_is_cut_off(server: CorpusHttpServer) -> None:
    sent: list[int] = []

    def endless() -> Iterator[bytes]:
        for _ in range(10_000):  # 640 MB if nobody stopped reading
            sent.append(1)
            yield b"\xff" * 65536

    url = server.stream("/huge", endless)
    fetch = FetchSettings(allow_private_networks=True, max_image_bytes=1024 * 1024)
    async with SafeFetcher(fetch) as f:
        error = await fetch_error(f, url)
    assert (error.reason, error.transient) == ("image larger than 1 MB", False)
    assert len(sent) < 1000


async def test_odd_limits_are_reported_in_bytes(server: CorpusHttpServer) -> None:
    async with SafeFetcher(FetchSettings(allow_private_networks=True, max_image_bytes=1000)) as f:
        error = await fetch_error(f, server.url("photos/rocket.jpg"))
    assert error.reason == "image larger than 1000 bytes"


async def test_body_of_exactly_the_limit_is_accepted(server: CorpusHttpServer) -> None:
    size = ROCKET.stat().st_size
    async with SafeFetcher(FetchSettings(allow_private_networks=True, max_image_bytes=size)) as f:
        assert len((await f.fetch(server.url("photos/rocket.jpg"))).content) == size


@pytest.mark.parametrize(
    ("after_headers", "seconds", "reason"),
    [(False, 1.0, "timed out after 1 s"), (True, 0.5, "timed out after 0.5 s")],
)
async def test_hanging_source_times_out(
    server: CorpusHttpServer, after_headers: bool, seconds: float, reason: str
) -> None:
    url = server.hang("/hang", after_headers=after_headers)
    fetch = FetchSettings(allow_private_networks=True, timeout_seconds=seconds)
    async with SafeFetcher(fetch) as f:
        error = await fetch_error(f, url)
    assert (error.reason, error.transient) == (reason, True)


async def test_timeout_covers_the_whole_redirect_chain(server: CorpusHttpServer) -> None:
    server.redirect("/slow-start", "/slow-end")
    server.hang("/slow-end")
    async with SafeFetcher(FetchSettings(allow_private_networks=True, timeout_seconds=0.5)) as f:
        error = await fetch_error(f, server.url("/slow-start"))
    assert error.reason == "timed out after 0.5 s"


@pytest.mark.parametrize(
    ("status", "transient"),
    [(404, False), (403, False), (410, False), (400, False), (408, True), (429, True),
     (500, True), (502, True), (503, True)],
)
async def test_http_errors_are_classified(
    server: CorpusHttpServer, fetcher: SafeFetcher, status: int, transient: bool
) -> None:
    url = server.respond(f"/status/{status}", status=status, body=b"nope",
                         headers={"Content-Type": "text/plain"})
    error = await fetch_error(fetcher, url)
    assert (error.reason, error.transient) == (f"HTTP {status} from source", transient)


async def test_missing_corpus_file_is_a_permanent_404(
    server: CorpusHttpServer, fetcher: SafeFetcher
) -> None:
    error = await fetch_error(fetcher, server.url("photos/missing.jpg"))
    assert (error.reason, error.transient) == ("HTTP 404 from source", False)


@pytest.mark.parametrize(
    "content_type",
    ["text/html; charset=utf-8", "application/json", "text/plain", "video/mp4",
     "application/problem+json"],
)
async def test_non_image_content_types_are_refused(
    server: CorpusHttpServer, fetcher: SafeFetcher, content_type: str
) -> None:
    url = server.respond("/page", body=b"<html></html>", headers={"Content-Type": content_type})
    error = await fetch_error(fetcher, url)
    media_type = content_type.split(";")[0]
    assert (error.reason, error.transient) == (f"not an image (content type {media_type})", False)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Content-Type": "application/octet-stream"}, {"Content-Type": "binary/octet-stream"},
     {"Content-Type": "IMAGE/JPEG"}],
)
async def test_binary_or_missing_content_types_are_accepted(
    server: CorpusHttpServer, fetcher: SafeFetcher, headers: dict[str, str]
) -> None:
    body = ROCKET.read_bytes()
    image = await fetcher.fetch(server.respond("/blob", body=body, headers=headers))
    assert image.content == body
    expected = headers.get("Content-Type")
    assert image.content_type == (expected.lower() if expected else None)


async def test_short_body_for_its_content_length_is_transient(
    server: CorpusHttpServer, fetcher: SafeFetcher
) -> None:
    url = server.respond("/liar", body=b"\xff\xd8\xff" * 3,
                         headers={"Content-Type": "image/jpeg", "Content-Length": "1000"})
    error = await fetch_error(fetcher, url)
    assert (error.reason, error.transient) == ("incomplete or malformed response from source", True)


async def test_long_body_for_its_content_length_is_truncated_to_it(
    server: CorpusHttpServer, fetcher: SafeFetcher
) -> None:
    url = server.respond("/long", body=b"0123456789",
                         headers={"Content-Type": "image/jpeg", "Content-Length": "4"})
    assert (await fetcher.fetch(url)).content == b"0123"


async def test_garbage_response_is_a_fetch_error(
    server: CorpusHttpServer, fetcher: SafeFetcher
) -> None:
    def garbage(exchange: Exchange) -> None:
        exchange.wfile.write(b"HELLO THERE\r\n\r\n")
        exchange.close_connection = True

    error = await fetch_error(fetcher, server.route("/garbage", garbage))
    assert (error.reason, error.transient) == ("incomplete or malformed response from source", True)


async def test_connection_refused_is_transient(fetcher: SafeFetcher) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = await fetch_error(fetcher, f"http://127.0.0.1:{port}/a.jpg")
    assert (error.reason, error.transient) == ("could not connect to source", True)


async def test_unresolvable_host_is_transient(fetcher: SafeFetcher) -> None:
    error = await fetch_error(fetcher, "http://no-such-host.invalid/a.jpg")
    assert (error.reason, error.transient) == ("could not resolve host", True)


async def test_server_stops_cleanly_with_parked_and_idle_connections() -> None:
    before = set(threading.enumerate())
    with CorpusHttpServer(CORPUS) as server:
        url = server.hang("/hang")
        policy = FetchSettings(allow_private_networks=True, timeout_seconds=0.2)
        async with SafeFetcher(policy) as f:
            await f.fetch(server.url("photos/rocket.jpg"))  # leaves a keep-alive connection
            with pytest.raises(FetchError):
                await f.fetch(url)  # leaves a handler parked in the hang route
            assert len(set(threading.enumerate()) - before) >= 2
    assert set(threading.enumerate()) - before == set()


async def test_error_pages_leave_their_connection_for_the_next_download(
        fetcher: SafeFetcher) -> None:
    """A catalogue full of 404s must not open a connection per image."""
    connections = 0
    answers = {b"/gone.jpg": b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found",
               b"/moved.jpg": b"HTTP/1.1 301 Moved\r\nLocation: /gone.jpg\r\n"
                              b"Content-Length: 5\r\n\r\nmoved"}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while head := await reader.readuntil(b"\r\n\r\n"):
            writer.write(answers[head.split(b" ")[1]])
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for path in ("gone.jpg", "moved.jpg", "gone.jpg"):
            error = await fetch_error(fetcher, f"http://127.0.0.1:{port}/{path}")
            assert error.reason == "HTTP 404 from source"
        assert connections == 1
    finally:
        server.close()


def counted(server: CorpusHttpServer, path: str, body: bytes) -> tuple[str, list[int]]:
    """A route serving ``body`` that notes each request's client port: one per connection."""
    ports: list[int] = []

    def handler(exchange: Exchange) -> None:
        ports.append(exchange.client_address[1])
        exchange.send(200, body, {"Content-Type": "image/jpeg"})

    return server.route(path, handler), ports


async def test_downloads_one_after_another_share_one_connection(
    server: CorpusHttpServer, fetcher: SafeFetcher
) -> None:
    url, ports = counted(server, "/counted.jpg", ROCKET.read_bytes())
    for _ in range(3):
        assert (await fetcher.fetch(url)).content == ROCKET.read_bytes()
    assert len(ports) == 3 and len(set(ports)) == 1


async def test_a_download_refused_midway_does_not_hand_its_connection_on(
    server: CorpusHttpServer,
) -> None:
    # The unread rest of the refused body would otherwise be taken for the next answer.
    small, ports = counted(server, "/small.jpg", b"\xff\xd8\xff" * 100)
    fetch = FetchSettings(allow_private_networks=True, max_image_bytes=100 * 1024)
    async with SafeFetcher(fetch) as f:
        await f.fetch(small)
        error = await fetch_error(f, server.url("/photos/rocket.jpg"))
        assert error.reason == "image larger than 100 KB"
        assert (await f.fetch(small)).content == b"\xff\xd8\xff" * 100
    assert len(set(ports)) == 2


async def test_connection_closed_by_the_server_while_idle_is_not_reused(
    server: CorpusHttpServer, fetcher: SafeFetcher
) -> None:
    await fetcher.fetch(server.url("photos/rocket.jpg"))
    server.drop_connections()  # the server hangs up the idle keep-alive connection
    assert (await fetcher.fetch(server.url("photos/rocket.jpg"))).content == ROCKET.read_bytes()
    assert len(server.requests) == 2


async def test_the_address_checked_is_the_address_connected_to(
    server: CorpusHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: a name that resolves to an allowed address when it is checked and to a
    refused one a moment later reaches the allowed one, never the other."""
    resolve = socket.getaddrinfo
    answers = iter(["127.0.0.1"] + ["127.0.0.2"] * 10)

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return resolve(next(answers) if host == "rebind.test" else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with socket.socket() as private:  # the "internal" service on the same port
        private.bind(("127.0.0.2", server.port))
        private.listen()
        private.setblocking(False)
        async with SafeFetcher(FetchSettings(), is_address_allowed=only_127_0_0_1) as f:
            image = await f.fetch(f"http://rebind.test:{server.port}/photos/rocket.jpg")
        assert image.content == ROCKET.read_bytes()
        with pytest.raises(BlockingIOError):
            private.accept()


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def https_server(authority: trustme.CA) -> Iterator[CorpusHttpServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(context)
    with CorpusHttpServer(CORPUS, host="localhost", tls=context) as running:
        yield running


async def test_https_verifies_the_url_host_name_not_the_checked_address(
    https_server: CorpusHttpServer, authority: trustme.CA
) -> None:
    context = ssl.create_default_context()
    authority.configure_trust(context)
    transport = guarded_transport(allow_private=False, is_allowed=lambda ip: ip.is_loopback,
                                  ssl_context=context)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(https_server.url("photos/rocket.jpg"))
        assert response.content == ROCKET.read_bytes()
        # The certificate names localhost; the same server by its address does not match it.
        with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
            await client.get(f"https://127.0.0.1:{https_server.port}/photos/rocket.jpg")


async def test_untrusted_certificate_fails_the_fetch_with_a_reason(
    https_server: CorpusHttpServer, fetcher: SafeFetcher
) -> None:
    # The fetcher trusts the public roots only; the test authority is not one of them.
    error = await fetch_error(fetcher, https_server.url("photos/rocket.jpg"))
    assert (error.reason, error.transient) == ("could not connect to source", True)
