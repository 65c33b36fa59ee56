"""One trace per request across the services: the upload, each image's job, the webhook.

The stack runs with PIXPIPE_TRACING=console, so each service writes its spans to its log
as lines of JSON; the test reads them back and follows the parent links between processes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.http_server import CorpusHttpServer
from tests.support.infrastructure import NatsServer
from tests.support.stack import (
    RunningStack,
    products_csv,
    stack_in,
    upload,
    wait_until_terminal,
)
from tests.support.webhook_receiver import WebhookReceiver

Span = dict[str, Any]
UPLOAD = "pixpipe.v1.IngestService/Upload"


@pytest.fixture(scope="module")
def traced_stack(tmp_path_factory: pytest.TempPathFactory, database_url: str,
                 nats_server: NatsServer) -> Iterator[RunningStack]:
    with stack_in(tmp_path_factory, "tracing", database_url=database_url,
                  nats_url=nats_server.url, PIXPIPE_TRACING="console",
                  # Spans exported a tenth of a second after they end, not five seconds.
                  OTEL_BSP_SCHEDULE_DELAY="100",
                  # Deliveries start from the completion notice, which carries the trace,
                  # rather than from a poll that might find them a moment before it.
                  PIXPIPE_WEBHOOK_POLL_SECONDS="60") as running:
        yield running


def logged_spans(log_dir: Path) -> list[Span]:
    """Every span the services have written so far (a line still being written is skipped)."""
    spans = []
    for path in sorted(log_dir.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith('{"name"'):
                continue
            try:
                spans.append(json.loads(line))
            except ValueError:
                continue
    return spans


async def wait_for_spans(stack: RunningStack, complete: Callable[[list[Span]], bool],
                         timeout: float = 30.0) -> list[Span]:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not complete(spans := logged_spans(stack.log_dir)):
        if time.monotonic() > deadline:
            raise AssertionError(f"spans incomplete after {timeout} s: "
                                 f"{sorted(span['name'] for span in spans)}\n{stack.logs()}")
        await asyncio.sleep(0.1)
    return spans


def of_request(spans: list[Span], request_id: str, name: str) -> list[Span]:
    return [span for span in spans if span["name"] == name
            and span["attributes"].get("pixpipe.request_id") == request_id]


def service(span: Span) -> str:
    return str(span["resource"]["attributes"]["service.name"])


async def test_a_request_is_one_trace_from_upload_to_webhook(
        traced_stack: RunningStack, corpus_server: CorpusHttpServer,
        corpus_dir: Path) -> None:
    with WebhookReceiver() as receiver:
        answer = await upload(traced_stack.ingest_address,
                              products_csv(corpus_dir, corpus_server.port),
                              webhook_url=receiver.url())
        await wait_until_terminal(traced_stack.status_address, answer.request_id)
        await asyncio.to_thread(receiver.wait_for_success, 60.0)
    request_id, images = answer.request_id, answer.image_count

    def complete(spans: list[Span]) -> bool:
        jobs = of_request(spans, request_id, "process image")
        return (len(of_request(spans, request_id, UPLOAD)) == 1
                and len({job["attributes"]["pixpipe.image_id"] for job in jobs}) == images
                and len(of_request(spans, request_id, "webhook delivery")) == 1)

    spans = await wait_for_spans(traced_stack, complete)
    by_id = {span["context"]["span_id"]: span for span in spans}

    (uploaded,) = of_request(spans, request_id, UPLOAD)
    trace_id = uploaded["context"]["trace_id"]
    assert service(uploaded) == "pixpipe-ingest"
    assert uploaded["kind"] == "SpanKind.SERVER"
    assert uploaded["attributes"]["pixpipe.image_count"] == images

    def ancestors(span: Span) -> list[str]:
        names = []
        while span["parent_id"] is not None:
            span = by_id[span["parent_id"]]
            names.append(span["name"])
        return names

    jobs = of_request(spans, request_id, "process image")
    assert {service(job) for job in jobs} == {"pixpipe-worker"}
    for job in jobs:
        assert job["context"]["trace_id"] == trace_id
        assert job["parent_id"] == uploaded["context"]["span_id"]
    outcomes = {job["attributes"]["pixpipe.image_id"]: job["attributes"] for job in jobs}
    assert sorted(attributes["pixpipe.outcome"] for attributes in outcomes.values()) == \
        ["completed"] * 12 + ["failed"] * 2
    assert all(attributes["pixpipe.bytes_out"] > 0 for attributes in outcomes.values()
               if attributes["pixpipe.outcome"] == "completed")

    # Each job's steps hang under it, and through it under the upload.
    job_ids = {job["context"]["span_id"] for job in jobs}
    steps = [span for span in spans if span["name"] in ("fetch", "encode and store")
             and span["parent_id"] in job_ids]
    assert sum(step["name"] == "fetch" for step in steps) >= images
    assert sum(step["name"] == "encode and store" for step in steps) >= 12
    assert all(ancestors(step) == ["process image", UPLOAD] for step in steps)

    # The notifier goes on from the job that finished the request.
    (noticed,) = of_request(spans, request_id, "request completed")
    (delivered,) = of_request(spans, request_id, "webhook delivery")
    assert {service(noticed), service(delivered)} == {"pixpipe-notifier"}
    assert noticed["context"]["trace_id"] == delivered["context"]["trace_id"] == trace_id
    assert noticed["parent_id"] in job_ids
    assert ancestors(delivered) == ["request completed", "process image", UPLOAD]
    assert delivered["attributes"]["pixpipe.outcome"] == "delivered"
    assert delivered["attributes"]["http.response.status_code"] == 200


async def test_a_rest_upload_goes_on_from_the_callers_trace(
        traced_stack: RunningStack, corpus_server: CorpusHttpServer,
        corpus_dir: Path) -> None:
    trace_id, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with httpx.AsyncClient(base_url=traced_stack.gateway_url, timeout=60) as rest:
        answer = await rest.post(
            "/upload/", headers={"traceparent": f"00-{trace_id}-{caller_span}-01"},
            files={"file": ("p.csv", products_csv(corpus_dir, corpus_server.port))})
    assert answer.status_code == 200, answer.text
    request_id = answer.json()["request_id"]
    await wait_until_terminal(traced_stack.status_address, request_id)

    spans = await wait_for_spans(traced_stack, lambda spans: bool(
        of_request(spans, request_id, UPLOAD) and of_request(spans, request_id,
                                                             "process image")))
    (uploaded,) = of_request(spans, request_id, UPLOAD)
    by_id = {span["context"]["span_id"]: span for span in spans}
    # FastAPI's own telemetry: its span for the HTTP request, with the endpoint's under it.
    endpoint = by_id[uploaded["parent_id"]]
    posted = by_id[endpoint["parent_id"]]
    assert {service(endpoint), service(posted)} == {"pixpipe-gateway"}
    assert posted["kind"] == "SpanKind.SERVER" and posted["name"].startswith("POST /upload")
    assert posted["parent_id"] == f"0x{caller_span}"
    assert {span["context"]["trace_id"] for span in (posted, endpoint, uploaded)} == \
        {f"0x{trace_id}"}
    assert all(job["context"]["trace_id"] == f"0x{trace_id}"
               for job in of_request(spans, request_id, "process image"))
