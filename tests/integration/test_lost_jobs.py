"""The lost-job sweeper against a real database and a real JetStream work queue."""

from __future__ import annotations

from datetime import timedelta

from pixpipe.bus import JOBS_STREAM, Bus, jobs_subject
from pixpipe.csv_input import parse_products_csv
from pixpipe.db.repository import Repository
from pixpipe.domain import ImageJob, ImageState, RequestOptions, RequestState, RequestView
from pixpipe.events import EventPublisher
from pixpipe_services.notifier.lost_jobs import LOST_JOB_REASON, sweep_lost_jobs_once
from tests.support.notifier import BASE_URL

CSV = (b"S. No.,Product Name,Input Image Urls\n"
       b'1,Lamp,"https://img.example/a.jpg,https://img.example/b.jpg"\n'
       b"2,Desk,https://img.example/c.jpg\n")
NOW = timedelta(0)  # every request counts as idle: the test decides what has happened


async def record(repository: Repository, *, webhook_url: str | None = None,
                 ) -> tuple[str, list[str]]:
    request_id, jobs = await repository.create_request(
        parse_products_csv(CSV), options=RequestOptions(), webhook_url=webhook_url,
        file_name="lost.csv")
    return request_id, [job.image_id for job in jobs]


async def view_of(repository: Repository, request_id: str) -> RequestView:
    view = await repository.get_request(request_id)
    assert view is not None
    return view


async def test_a_request_whose_jobs_never_reached_the_queue_is_failed_with_its_webhook(
        repository: Repository, bus: Bus) -> None:
    request_id, image_ids = await record(repository, webhook_url="https://hooks.example/x")
    await repository.note_retry(image_ids[1], "HTTP 503 from source")
    publisher = EventPublisher(bus, repository, public_base_url=BASE_URL)

    assert await sweep_lost_jobs_once(bus, repository, publisher, lifetime=NOW) >= 1

    view = await view_of(repository, request_id)
    assert view.counters.status == RequestState.FAILED
    assert (view.counters.failed, view.counters.completed) == (3, 0)
    reasons = [image.error for image in view.images]
    assert reasons == [LOST_JOB_REASON, "HTTP 503 from source", LOST_JOB_REASON]
    assert view.webhook is not None and view.webhook.state == "pending"
    # Swept once: a second pass finds nothing left to fail.
    assert await repository.fail_lost_images(request_id, LOST_JOB_REASON) is None


async def test_queued_jobs_keep_their_images_but_a_dead_last_delivery_is_failed(
        repository: Repository, bus: Bus) -> None:
    request_id, image_ids = await record(repository)
    publisher = EventPublisher(bus, repository, public_base_url=BASE_URL)
    # This request's jobs wait in the queue (no worker runs here).
    await bus.publish_jobs([ImageJob(request_id=request_id, image_id=image_id,
                                     url="https://img.example/a.jpg")
                            for image_id in image_ids])
    try:
        await sweep_while_queued(bus, repository, publisher, request_id, image_ids)
    finally:
        # Workers of later tests on this server must not pick these jobs up.
        await bus.js.purge_stream(JOBS_STREAM, subject=jobs_subject(request_id))


async def sweep_while_queued(bus: Bus, repository: Repository, publisher: EventPublisher,
                             request_id: str, image_ids: list[str]) -> None:
    assert await bus.jobs_waiting(request_id) == 3
    await sweep_lost_jobs_once(bus, repository, publisher, lifetime=NOW)
    view = await view_of(repository, request_id)
    assert [image.status for image in view.images] == [ImageState.PENDING] * 3

    # A last delivery marked its image processing, then its worker died for good.
    assert await repository.start_image(image_ids[0]) is not None
    await sweep_lost_jobs_once(bus, repository, publisher, lifetime=NOW)
    view = await view_of(repository, request_id)
    assert [image.status for image in view.images] == [
        ImageState.FAILED, ImageState.PENDING, ImageState.PENDING]
    assert view.counters.status == RequestState.PROCESSING and view.counters.failed == 1
