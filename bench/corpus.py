"""The benchmark's images: the shared photo corpus, served from memory on loopback."""

from __future__ import annotations

import csv
import io
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive, so the workers' pooled httpx clients reuse their connections.
    protocol_version = "HTTP/1.1"
    server: _CorpusHTTPServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        photo = self.server.photos.get(path.removeprefix("/photos/"))
        if photo is None or not path.startswith("/photos/"):
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", photo.media_type)
        self.send_header("Content-Length", str(len(photo.data)))
        self.end_headers()
        self.wfile.write(photo.data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a line per image would cost the benchmark more than the serving does


class _CorpusHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, photos: list[Photo]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.photos = {photo.name: photo for photo in photos}


@contextmanager
def serving(photos: list[Photo]) -> Iterator[str]:
    """Serve ``/photos/<name>`` on a free loopback port; yields the base URL."""
    server = _CorpusHTTPServer(photos)
    thread = threading.Thread(target=server.serve_forever, name="bench-corpus", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
