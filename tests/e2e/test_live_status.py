"""Live status through the whole stack: WatchStatus streams and Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
import uuid

import grpc
import httpx
import pytest

from pixpipe.v1 import status_pb2, status_pb2_grpc
from tests.support.http_server import CorpusHttpServer
from tests.support.stack import (
    RunningStack,
    batch_csv,
    get_status,
    upload,
    wait_until_terminal,
)


async def watch(address: str, request_id: str) -> list[status_pb2.WatchStatusResponse]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        return [event async for event in stub.WatchStatus(
            status_pb2.WatchStatusRequest(request_id=request_id), timeout=120)]


def replay(events: list[status_pb2.WatchStatusResponse]) -> dict[str, int]:
    """Image states as a watcher knows them just before the completion event."""
    states: dict[str, int] = {}
    for event in events:
        kind = event.WhichOneof("event")
        if kind == "snapshot":
            states = {image.image_id: image.status for image in event.snapshot.images}
        elif kind == "image":
            states[event.image.image.image_id] = event.image.image.status
    return states


async def test_watchers_early_and_late_see_the_same_consistent_story(
        stack: RunningStack, corpus_server: CorpusHttpServer) -> None:
    answer = await upload(stack.ingest_address,
                          batch_csv(corpus_server, 30, tag="live", per_product=2))
    early = [asyncio.create_task(watch(stack.status_address, answer.request_id))
             for _ in range(2)]
    final = await wait_until_terminal(stack.status_address, answer.request_id)
    late = await watch(stack.status_address, answer.request_id)
    streams = [*await asyncio.gather(*early), late]

    truth = {image.image_id: image.status for image in final.images}
    for events in streams:
        assert events[0].WhichOneof("event") == "snapshot"
        assert events[-1].WhichOneof("event") == "completed"
        assert all(event.WhichOneof("event") != "completed" for event in events[:-1])
        versions = [event.version for event in events[:-1]]
        assert versions == sorted(versions) and len(set(versions)) == len(versions)
        completed = events[-1].completed
        assert (completed.status, completed.total, completed.completed, completed.failed) == (
            final.status, final.total, final.completed, final.failed)
        assert {image.image_id: image.status for image in completed.images} == truth
        # Snapshot plus the events alone (before the completion) already tell the final truth.
        assert replay(events[:-1]) == truth
    assert len(streams[0]) > 3, "an early watcher should see live image events"
    assert [event.WhichOneof("event") for event in late] == ["snapshot", "completed"]


async def test_watching_an_unknown_or_malformed_id(stack: RunningStack) -> None:
    for request_id, code in ((str(uuid.uuid4()), grpc.StatusCode.NOT_FOUND),
                             ("bogus", grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await watch(stack.status_address, request_id)
        assert caught.value.code() == code


def parse_sse(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            fields[name] = value
        events.append(fields)
    return events


async def test_server_sent_events_stream_and_close_after_completion(
        stack: RunningStack, corpus_server: CorpusHttpServer) -> None:
    answer = await upload(stack.ingest_address,
                          batch_csv(corpus_server, 12, tag="sse", per_product=2))
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=120) as client:
        async with client.stream("GET", f"/status/{answer.request_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            text = "".join([chunk async for chunk in response.aiter_text()])
        events = parse_sse(text)
        assert events[0]["event"] == "snapshot"
        assert events[-1]["event"] == "completed"
        final = json.loads(events[-1]["data"])["request"]
        assert final["status"] == "completed" and final["completed"] == 12
        assert all(event["id"].isdigit() for event in events)

        # A browser reconnecting with Last-Event-ID after the end gets the outcome at once.
        resumed = await client.get(f"/status/{answer.request_id}/events",
                                   headers={"Last-Event-ID": events[-1]["id"]})
        assert [event["event"] for event in parse_sse(resumed.text)] == ["completed"]

        missing = await client.get(f"/status/{uuid.uuid4()}/events")
        assert missing.status_code == 404
    status = await get_status(stack.status_address, answer.request_id)
    assert status.completed == 12
