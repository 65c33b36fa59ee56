"""Content-addressed reuse in a real worker, against a real origin and database."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from pixpipe.bus import Bus
from pixpipe.csv_input import parse_products_csv
from pixpipe.db.models import ContentOutput
from pixpipe.db.repository import Repository
from pixpipe.domain import ImageState, ImageView, RequestOptions, RequestState
from pixpipe.settings import Settings
from tests.integration.conftest import running_worker
from tests.integration.test_worker import wait_terminal
from tests.support.http_server import CorpusHttpServer, Exchange


class VersionedSource:
    """One route answering a body with an ETag and Last-Modified, 304 to a matching
    If-None-Match; ``replace`` changes the body and its ETag."""

    def __init__(self, server: CorpusHttpServer, path: str, body: bytes) -> None:
        self._lock = threading.Lock()
        self._body, self._version = body, 1
        self.statuses: list[int] = []
        self.url = server.route(path, self._answer)

    def replace(self, body: bytes) -> None:
        with self._lock:
            self._body, self._version = body, self._version + 1

    def _answer(self, exchange: Exchange) -> None:
        with self._lock:
            body, etag = self._body, f'"v{self._version}"'
            status = 304 if exchange.headers.get("If-None-Match") == etag else 200
            self.statuses.append(status)
        headers = {"ETag": etag, "Last-Modified": "Tue, 01 Dec 2026 00:00:00 GMT"}
        if status == 304:
            exchange.send(304, b"", headers)
        else:
            exchange.send(200, body, {**headers, "Content-Type": "image/jpeg"})


async def submit(repository: Repository, bus: Bus, urls: list[str],
                 options: RequestOptions | None = None) -> str:
    cell = ",".join(urls)
    csv_bytes = f'S. No.,Product Name,Input Image Urls\n1,Thing,"{cell}"\n'.encode()
    request_id, jobs = await repository.create_request(
        parse_products_csv(csv_bytes), options=options or RequestOptions(), webhook_url=None,
        file_name="t.csv")
    await bus.publish_jobs(jobs)
    return request_id


async def content_entries(repository: Repository, request_ids: list[str]) -> int:
    async with repository._sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(ContentOutput)
                                         .where(ContentOutput.request_id.in_(request_ids)))
                   or 0)


def output_file(settings: Settings, image: ImageView) -> Path:
    assert image.status == ImageState.COMPLETED and image.output_path, image
    return settings.storage.images_dir / image.output_path


def headers_of(server: CorpusHttpServer, path: str) -> list[dict[str, str]]:
    return [dict(request.headers) for request in server.requests if request.path == path]


async def test_one_photo_under_two_urls_in_one_request_is_encoded_once(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus,
        http_server: CorpusHttpServer, corpus_dir: Path) -> None:
    photo = (corpus_dir / "photos" / "rocket.jpg").read_bytes()
    http_server.respond("/a/rocket.jpg", body=photo, headers={"Content-Type": "image/jpeg"})
    http_server.respond("/b/rocket.jpg", body=photo, headers={"Content-Type": "image/jpeg"})
    settings = make_settings()
    async with running_worker(settings):
        request_id = await submit(repository, bus, [http_server.url("/a/rocket.jpg"),
                                                    http_server.url("/b/rocket.jpg")])
        view = await wait_terminal(repository, request_id)
    first, second = (output_file(settings, image) for image in view.images)
    assert first != second
    # One encode: the second image's file is a link to the first's, not a second output.
    assert first.stat().st_ino == second.stat().st_ino
    assert first.read_bytes() == second.read_bytes()
    assert view.images[0].bytes_out == view.images[1].bytes_out
    assert view.images[0].encoder == view.images[1].encoder is not None
    assert await content_entries(repository, [request_id]) == 1


async def test_a_repeated_url_is_fetched_conditionally_and_a_304_reuses_the_output(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus,
        http_server: CorpusHttpServer, corpus_dir: Path) -> None:
    source = VersionedSource(http_server, "/versioned.jpg",
                             (corpus_dir / "photos" / "rocket.jpg").read_bytes())
    settings = make_settings()
    async with running_worker(settings):
        first = await wait_terminal(repository, await submit(repository, bus, [source.url]))
        second = await wait_terminal(repository, await submit(repository, bus, [source.url]))
        source.replace((corpus_dir / "photos" / "retina.jpg").read_bytes())
        third = await wait_terminal(repository, await submit(repository, bus, [source.url]))
    assert source.statuses == [200, 304, 200]
    sent = headers_of(http_server, "/versioned.jpg")
    assert "If-None-Match" not in sent[0]
    assert sent[1]["If-None-Match"] == '"v1"'
    assert sent[1]["If-Modified-Since"] == "Tue, 01 Dec 2026 00:00:00 GMT"
    assert sent[2]["If-None-Match"] == '"v1"'
    original, reused, changed = (output_file(settings, view.images[0])
                                 for view in (first, second, third))
    assert original.stat().st_ino == reused.stat().st_ino
    assert second.images[0].bytes_in == first.images[0].bytes_in
    assert changed.read_bytes() != original.read_bytes()
    assert third.images[0].bytes_in != first.images[0].bytes_in


async def test_other_options_do_not_reuse(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus,
        http_server: CorpusHttpServer, corpus_dir: Path) -> None:
    source = VersionedSource(http_server, "/options.jpg",
                             (corpus_dir / "photos" / "rocket.jpg").read_bytes())
    settings = make_settings()
    async with running_worker(settings):
        low = await wait_terminal(repository, await submit(
            repository, bus, [source.url], RequestOptions(quality=40)))
        high = await wait_terminal(repository, await submit(
            repository, bus, [source.url], RequestOptions(quality=80)))
    assert source.statuses == [200, 200]
    assert all("If-None-Match" not in sent for sent in headers_of(http_server, "/options.jpg"))
    low_file, high_file = output_file(settings, low.images[0]), output_file(settings,
                                                                            high.images[0])
    assert low_file.stat().st_ino != high_file.stat().st_ino
    assert (low.images[0].quality_used, high.images[0].quality_used) == (40, 80)
    assert await content_entries(repository, [low.request_id, high.request_id]) == 2


async def test_a_corrupt_source_is_not_offered_for_reuse(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus,
        http_server: CorpusHttpServer) -> None:
    corrupt = http_server.url("/edge/truncated_jpeg.jpg")
    async with running_worker(make_settings()):
        request_id = await submit(repository, bus, [corrupt, corrupt + "?again"])
        view = await wait_terminal(repository, request_id)
    assert view.counters.status == RequestState.FAILED
    assert [image.error for image in view.images] == ["truncated image data"] * 2
    assert await content_entries(repository, [request_id]) == 0


async def test_reuse_can_be_turned_off(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus,
        http_server: CorpusHttpServer, corpus_dir: Path) -> None:
    source = VersionedSource(http_server, "/off.jpg",
                             (corpus_dir / "photos" / "rocket.jpg").read_bytes())
    settings = make_settings(reuse_outputs=False)
    async with running_worker(settings):
        request_id = await submit(repository, bus, [source.url, source.url + "?twice"])
        view = await wait_terminal(repository, request_id)
    first, second = (output_file(settings, image) for image in view.images)
    assert first.stat().st_ino != second.stat().st_ino
    assert first.read_bytes() == second.read_bytes()  # the encoder is deterministic
    assert await content_entries(repository, [request_id]) == 0
