"""Unit tests for pixpipe.job_batch: bulk-encoded jobs are the ImageJob JSON, ids are UUID4s."""

from __future__ import annotations

import uuid

import pytest

from pixpipe.domain import ImageJob, RequestOptions
from pixpipe.job_batch import JobBatch, uuid4_hexes

URLS = [
    "https://img.example/a.jpg",
    "http://127.0.0.1:8080/photos/b.png?size=2&crop=\"x\"",
    "https://img.example/back\\slash/ü/日本.jpg",
    "https://img.example/tab\tand\x7fdel\x01",
]


@pytest.mark.parametrize("options", [RequestOptions(), RequestOptions(quality=30, format="webp",
                                                                      max_width=640)])
def test_messages_are_what_image_job_writes(options: RequestOptions) -> None:
    batch = JobBatch(str(uuid.uuid4()), options, uuid4_hexes(len(URLS)), URLS)
    jobs = [ImageJob(request_id=batch.request_id, image_id=image_id, url=url, options=options)
            for image_id, url in zip(batch.image_ids, URLS, strict=True)]
    assert list(batch.messages()) == [
        (job.message_id, job.model_dump_json().encode()) for job in jobs]
    assert list(batch) == jobs
    assert batch[1] == jobs[1] and list(batch[2:]) == jobs[2:] and len(batch) == 4


def test_ids_are_distinct_uuid4s() -> None:
    ids = uuid4_hexes(10_000)
    assert len(set(ids)) == 10_000
    for image_id in ids[:1000]:
        parsed = uuid.UUID(hex=image_id)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, image_id)
    assert uuid4_hexes(0) == []
