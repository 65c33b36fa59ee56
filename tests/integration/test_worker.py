"""The worker against real NATS, a real database and a real HTTP source."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import select

from pixpipe.bus import Bus
from pixpipe.csv_input import parse_products_csv
from pixpipe.db.models import ImageRecord
from pixpipe.db.repository import Repository
from pixpipe.domain import ImageState, RequestOptions, RequestState, RequestView
from pixpipe.settings import Settings
from tests.integration.conftest import running_worker
from tests.support.http_server import CorpusHttpServer, Exchange


async def submit(repository: Repository, bus: Bus, urls: list[str]) -> str:
    cell = ",".join(urls)
    csv_bytes = f'S. No.,Product Name,Input Image Urls\n1,Thing,"{cell}"\n'.encode()
    request_id, jobs = await repository.create_request(
        parse_products_csv(csv_bytes), options=RequestOptions(), webhook_url=None,
        file_name="t.csv")
    await bus.publish_jobs(jobs)
    return request_id


async def wait_terminal(repository: Repository, request_id: str,
                        seconds: float = 60.0) -> RequestView:
    deadline = time.monotonic() + seconds
    while True:
        view = await repository.get_request(request_id)
        assert view is not None
        if view.counters.status in (RequestState.COMPLETED, RequestState.FAILED):
            return view
        assert time.monotonic() < deadline, f"not terminal: {view.counters}"
        await asyncio.sleep(0.05)


async def attempts_of(repository: Repository, image_id: str) -> int:
    async with repository._sessions() as session:
        return int(await session.scalar(
            select(ImageRecord.attempts).where(ImageRecord.id == image_id)) or 0)


def flaky_route(server: CorpusHttpServer, path: str, failures: int, corpus_file: Path,
                status: int = 503) -> list[int]:
    """Answer ``status`` ``failures`` times, then the real file; returns the hit log."""
    hits: list[int] = []
    lock = threading.Lock()

    def handler(exchange: Exchange) -> None:
        with lock:
            hits.append(len(hits) + 1)
            attempt = len(hits)
        if attempt <= failures:
            exchange.send(status, b"try later", {"Content-Type": "text/plain"})
        else:
            exchange.send(200, corpus_file.read_bytes(), {"Content-Type": "image/jpeg"})

    server.route(path, handler)
    return hits


async def test_transient_faults_are_retried_until_success(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus,
        http_server: CorpusHttpServer, corpus_dir: Path) -> None:
    hits = flaky_route(http_server, "/flaky.jpg", 2, corpus_dir / "photos" / "rocket.jpg")
    async with running_worker(make_settings()):
        request_id = await submit(repository, bus, [http_server.url("/flaky.jpg")])
        view = await wait_terminal(repository, request_id)
    image = view.images[0]
    assert image.status == ImageState.COMPLETED and image.error is None
    assert len(hits) == 3
    assert await attempts_of(repository, image.image_id) == 3


async def test_a_fault_that_never_clears_fails_after_max_deliver(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus,
        http_server: CorpusHttpServer, corpus_dir: Path) -> None:
    hits = flaky_route(http_server, "/down.jpg", 100, corpus_dir / "photos" / "rocket.jpg",
                       status=500)
    async with running_worker(make_settings(job_max_deliver=3)):
        request_id = await submit(repository, bus, [
            http_server.url("/down.jpg"), http_server.url("/photos/rocket.jpg")])
        view = await wait_terminal(repository, request_id)
    down, good = view.images
    assert down.status == ImageState.FAILED
    assert down.error == "HTTP 500 from source"
    assert len(hits) == 3
    assert good.status == ImageState.COMPLETED
    assert view.counters.status == RequestState.COMPLETED
    assert (view.counters.completed, view.counters.failed) == (1, 1)


async def test_permanent_faults_are_not_retried(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus,
        http_server: CorpusHttpServer, corpus_dir: Path) -> None:
    hits = flaky_route(http_server, "/gone.jpg", 100, corpus_dir / "photos" / "rocket.jpg",
                       status=404)
    async with running_worker(make_settings()):
        request_id = await submit(repository, bus, [
            http_server.url("/gone.jpg"), http_server.url("/edge/truncated_jpeg.jpg"),
            http_server.url("/edge/broken.png")])
        view = await wait_terminal(repository, request_id)
    assert len(hits) == 1
    assert view.counters.status == RequestState.FAILED
    reasons = [image.error for image in view.images]
    assert reasons[0] == "HTTP 404 from source"
    assert all(reasons) and all(image.status == ImageState.FAILED for image in view.images)


async def test_slow_download_keeps_its_job_alive_past_the_ack_wait(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus,
        http_server: CorpusHttpServer, corpus_dir: Path) -> None:
    photo = (corpus_dir / "photos" / "rocket.jpg").read_bytes()

    def slowly() -> Iterator[bytes]:
        # About 3 s in all, three times the ack wait below.
        for start in range(0, len(photo), len(photo) // 10 + 1):
            time.sleep(0.3)
            yield photo[start:start + len(photo) // 10 + 1]

    http_server.stream("/slow.jpg", slowly)
    async with running_worker(make_settings(job_ack_wait_seconds=1.0)):
        request_id = await submit(repository, bus, [http_server.url("/slow.jpg")])
        view = await wait_terminal(repository, request_id)
    assert view.images[0].status == ImageState.COMPLETED
    assert await attempts_of(repository, view.images[0].image_id) == 1
    assert len([r for r in http_server.requests if r.path == "/slow.jpg"]) == 1


async def test_a_worker_killed_on_the_last_delivery_still_fails_the_image(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus,
        http_server: CorpusHttpServer, tmp_path: Path) -> None:
    """SIGKILL mid-download with no deliveries left: the max-deliveries advisory settles it."""
    http_server.hang("/hangs.jpg")
    settings = make_settings(job_max_deliver=1, job_ack_wait_seconds=1.5,
                             fetch_timeout_seconds=120.0)
    environment = {**os.environ, **{f"PIXPIPE_{key.upper()}": str(value) for key, value in {
        "data_dir": settings.storage.data_dir, "database_url": settings.storage.database_url,
        "nats_url": settings.nats.url, "allow_private_networks": "true",
        "job_max_deliver": 1, "job_ack_wait_seconds": 1.5, "fetch_timeout_seconds": 120,
        "codec_processes": 1}.items()}}
    doomed = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pixpipe_services.worker.main", env=environment,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        request_id = await submit(repository, bus, [http_server.url("/hangs.jpg")])
        deadline = time.monotonic() + 30
        while not any(r.path == "/hangs.jpg" for r in http_server.requests):
            assert time.monotonic() < deadline, "the worker never fetched the image"
            await asyncio.sleep(0.05)
        doomed.send_signal(signal.SIGKILL)
        await asyncio.wait_for(doomed.wait(), timeout=10)
        async with running_worker(settings):
            view = await wait_terminal(repository, request_id, seconds=30)
    finally:
        if doomed.returncode is None:
            doomed.kill()
            await doomed.wait()
    image = view.images[0]
    assert image.status == ImageState.FAILED
    assert image.error == "gave up after 1 attempts"
    assert view.counters.status == RequestState.FAILED


async def test_worker_metrics_count_outcomes_and_failure_reasons(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus,
        http_server: CorpusHttpServer) -> None:
    import httpx

    from pixpipe.dev.embedded_nats import free_port

    port = free_port()

    def value(text: str, sample: str) -> float:
        line = next(line for line in text.splitlines() if line.startswith(sample + " "))
        return float(line.rsplit(" ", 1)[1])

    async with running_worker(make_settings(metrics_port=port)):
        request_id = await submit(repository, bus, [
            http_server.url("/photos/rocket.jpg"), http_server.url("/missing.jpg")])
        await wait_terminal(repository, request_id)
        async with httpx.AsyncClient() as client:
            # Jobs left over from earlier tests on a shared server may be counted, or be in
            # flight for a moment; the gauge must come back to zero.
            deadline = time.monotonic() + 30
            while value(text := (await client.get(f"http://127.0.0.1:{port}/metrics")).text,
                        "pixpipe_jobs_in_flight") != 0:
                assert time.monotonic() < deadline, "jobs stayed in flight"
                await asyncio.sleep(0.1)

    assert value(text, 'pixpipe_images_total{outcome="completed"}') >= 1
    assert value(text, 'pixpipe_image_failures_total{reason="http_4xx"}') >= 1


async def test_a_job_is_done_as_the_database_records_it_not_as_the_bus_claims(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus,
        http_server: CorpusHttpServer) -> None:
    """A message forged for a real image, with another URL and options, fetches and encodes
    what the request recorded; a forged request id for it is dropped."""
    import json

    from pixpipe.bus import jobs_subject

    photo = http_server.url("/photos/rocket.jpg")
    elsewhere = http_server.url("/photos/logo.png")
    csv_bytes = f"S. No.,Product Name,Input Image Urls\n1,Thing,{photo}\n".encode()
    request_id, jobs = await repository.create_request(
        parse_products_csv(csv_bytes), options=RequestOptions(quality=60), webhook_url=None,
        file_name="t.csv")
    image_id = jobs[0].image_id
    other_request = str(uuid.uuid4())
    for claimed_request, tag in ((other_request, "wrong-request"), (request_id, "forged")):
        forged = {"request_id": claimed_request, "image_id": image_id, "url": elsewhere,
                  "options": {"quality": 5, "format": "webp"}}
        await bus.js.publish(jobs_subject(claimed_request), json.dumps(forged).encode(),
                             headers={"Nats-Msg-Id": f"{tag}-{image_id}"})
    async with running_worker(make_settings()):
        view = await wait_terminal(repository, request_id)
    [image] = view.images
    assert image.status == ImageState.COMPLETED, image.error
    assert image.quality_used == 60 and image.output_path and image.output_path.endswith(".jpg")
    fetched = {request.path for request in http_server.requests}
    assert "/photos/rocket.jpg" in fetched and "/photos/logo.png" not in fetched


async def test_a_forged_job_is_dropped_and_writes_nothing(
        make_settings: Callable[..., Settings], repository: Repository, bus: Bus,
        http_server: CorpusHttpServer, tmp_path: Path) -> None:
    """Ids from the bus become file paths: a job whose ids are not ids never reaches a codec."""
    import json
    import uuid

    from pixpipe.bus import jobs_subject

    settings = make_settings()
    real = str(uuid.uuid4())
    forged = {"request_id": "../../../escaped", "image_id": "../evil",
              "url": http_server.url("/photos/rocket.jpg"), "options": {}}
    await bus.js.publish(jobs_subject(real), json.dumps(forged).encode(),
                         headers={"Nats-Msg-Id": f"forged-{real}"})
    # Well-formed ids of an image that does not exist: downloaded perhaps, never stored.
    unknown = {**forged, "request_id": real, "image_id": uuid.uuid4().hex}
    await bus.js.publish(jobs_subject(real), json.dumps(unknown).encode(),
                         headers={"Nats-Msg-Id": f"unknown-{real}"})
    async with running_worker(settings):
        # A real request published after it finishes only once the forged one was handled.
        request_id = await submit(repository, bus, [http_server.url("/photos/rocket.jpg")])
        view = await wait_terminal(repository, request_id)
    assert view.counters.status == RequestState.COMPLETED
    # Where the forged ids would have put the output, and anything named after them.
    landing = settings.storage.images_dir / "../../../escaped/../evil.jpg"
    assert not landing.resolve().exists()
    assert not list(tmp_path.parent.rglob("evil*")) and not list(tmp_path.parent.rglob("escaped"))
    assert not (settings.storage.images_dir / real).exists()
