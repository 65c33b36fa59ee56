"""The benchmark's images: the shared photo corpus, served from memory on loopback."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
URLS_PER_PRODUCT = 5


def corpus_dir() -> Path:
    """``PIXPIPE_BENCH_CORPUS``, else ``shared/corpus`` beside the repository."""
    override = os.environ.get("PIXPIPE_BENCH_CORPUS")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "shared" / "corpus"


@dataclass(frozen=True)
class Photo:
    name: str
    media_type: str
    data: bytes


def load_photos(root: Path) -> list[Photo]:
    """Every JPEG and PNG under ``root/photos``, in name order."""
    folder = root / "photos"
    photos = [Photo(name=path.name, media_type=_MEDIA_TYPES[path.suffix.lower()],
                    data=path.read_bytes())
              for path in sorted(folder.iterdir()) if path.suffix.lower() in _MEDIA_TYPES]
    if not photos:
        raise FileNotFoundError(f"no .jpg or .png photos in {folder} "
                                "(set PIXPIPE_BENCH_CORPUS to the corpus directory)")
    return photos


def cycle(photos: list[Photo], count: int) -> list[Photo]:
    """``count`` photos, going round the corpus: the i-th image of a run is ``result[i]``."""
    return [photos[index % len(photos)] for index in range(count)]


def products_csv(base_url: str, photos: list[Photo], count: int) -> bytes:
    """An upload of ``count`` distinct URLs (``?n=<i>``), ``URLS_PER_PRODUCT`` per product."""
    urls = [f"{base_url}/photos/{photo.name}?n={index}"
            for index, photo in enumerate(cycle(photos, count))]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["S. No.", "Product Name", "Input Image Urls"])
    for serial, start in enumerate(range(0, count, URLS_PER_PRODUCT), start=1):
        writer.writerow([serial, f"SKU{serial}",
                         ",".join(urls[start:start + URLS_PER_PRODUCT])])
    return out.getvalue().encode()


# An origin's answer to one request: (method, path without its query, header lines) -> bytes.
Answer = Callable[[bytes, bytes, list[bytes]], bytes]


class _Origin(asyncio.Protocol):
    """An HTTP/1.1 origin in a few lines of asyncio; keep-alive, pipelining.

    It stands in for the shop's CDN, which costs pixpipe nothing: the benchmark's own share of
    the cores stays small (http.server parses every request's headers with the email package,
    which costs more than the serving).
    """

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head, self._buffer = self._buffer[:end], self._buffer[end + 4:]
            request_line, *header_lines = head.split(b"\r\n")
            method, _, rest = request_line.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            self._transport.write(self._answer(method, path, header_lines))


NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


@contextmanager
def serve_http(answer: Answer, *, name: str = "bench-origin") -> Iterator[str]:
    """Serve ``answer`` on a free loopback port from a thread; yields the base URL."""
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(
        lambda: _Origin(answer), "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()


def _responses(photos: list[Photo]) -> dict[bytes, bytes]:
    return {f"/photos/{photo.name}".encode(): (
        f"HTTP/1.1 200 OK\r\nContent-Type: {photo.media_type}\r\n"
        f"Content-Length: {len(photo.data)}\r\n\r\n").encode() + photo.data
        for photo in photos}


@contextmanager
def serving(photos: list[Photo]) -> Iterator[str]:
    """``GET /photos/<name>`` from prebuilt responses, 404 to anything else."""
    responses = _responses(photos)

    def answer(method: bytes, path: bytes, _headers: list[bytes]) -> bytes:
        response = responses.get(path) if method == b"GET" else None
        return response or NOT_FOUND

    with serve_http(answer, name="bench-corpus") as base_url:
        yield base_url
