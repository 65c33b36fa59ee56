"""The repository on a real database: idempotent results, completion decided exactly once."""

from __future__ import annotations

import asyncio

from pixpipe.csv_input import parse_products_csv
from pixpipe.db.repository import Repository
from pixpipe.domain import (
    ImageFailure,
    ImageState,
    ImageSuccess,
    RequestOptions,
    RequestState,
)


def csv_with(images: int) -> bytes:
    rows = [f"{n},Item {n},https://img.example/{n}.jpg" for n in range(1, images + 1)]
    return ("S. No.,Product Name,Input Image Urls,Colour\n" +
            "\n".join(f"{row},red" for row in rows) + "\n").encode()


def success(image_id: str) -> ImageSuccess:
    return ImageSuccess(output_path=f"r/{image_id}.jpg", bytes_in=100, bytes_out=10,
                        width=1, height=1)


async def test_concurrent_results_finish_the_request_exactly_once(
        repository: Repository) -> None:
    request_id, jobs = await repository.create_request(
        parse_products_csv(csv_with(24)), options=RequestOptions(quality=30),
        webhook_url=None, file_name="many.csv")
    await asyncio.gather(*(repository.start_image(job.image_id) for job in jobs))
    outcomes = [success(job.image_id) if index % 4 else ImageFailure(reason="not an image")
                for index, job in enumerate(jobs)]
    changes = await asyncio.gather(*(
        repository.finish_image(job.image_id, outcome)
        for job, outcome in zip(jobs, outcomes, strict=True)))
    assert all(change is not None for change in changes)
    assert sum(change.finished_request for change in changes if change) == 1
    versions = sorted(change.counters.version for change in changes if change)
    assert len(set(versions)) == len(versions), "two commits produced the same version"

    view = await repository.get_request(request_id)
    assert view is not None
    assert view.counters.status == RequestState.COMPLETED
    assert (view.counters.completed, view.counters.failed) == (18, 6)
    assert view.completed_at is not None
    assert view.options == RequestOptions(quality=30)
    assert view.header == ["S. No.", "Product Name", "Input Image Urls", "Colour"]


async def test_a_repeated_result_changes_nothing(repository: Repository) -> None:
    request_id, jobs = await repository.create_request(
        parse_products_csv(csv_with(2)), options=RequestOptions(), webhook_url=None,
        file_name="twice.csv")
    first = jobs[0].image_id
    assert await repository.start_image(first) is not None
    assert await repository.finish_image(first, success(first)) is not None
    before = await repository.get_request(request_id)

    assert await repository.start_image(first) is None
    assert await repository.finish_image(first, ImageFailure(reason="late")) is None
    after = await repository.get_request(request_id)
    assert before is not None and after is not None
    assert after.counters == before.counters
    assert after.images[0].status == ImageState.COMPLETED and after.images[0].error is None


async def test_every_image_failing_fails_the_request(repository: Repository) -> None:
    request_id, jobs = await repository.create_request(
        parse_products_csv(csv_with(3)), options=RequestOptions(), webhook_url=None,
        file_name="bad.csv")
    for job in jobs:
        await repository.finish_image(job.image_id, ImageFailure(reason="HTTP 404 from source"))
    view = await repository.get_request(request_id)
    assert view is not None and view.counters.status == RequestState.FAILED
    assert view.counters.failed == 3
