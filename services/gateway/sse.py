"""Turns a WatchStatus stream into Server-Sent Events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc

from pixpipe.status_messages import event_to_json
from pixpipe.v1 import status_pb2


def format_sse(event: status_pb2.WatchStatusResponse) -> str:
    kind = event.WhichOneof("event") or "message"
    data = json.dumps(event_to_json(event), separators=(",", ":"))
    # The id is the version, so a browser's Last-Event-ID reconnect resumes after it.
    return f"id: {event.version}\nevent: {kind}\ndata: {data}\n\n"


async def status_event_stream(
    first: Any, stream: grpc.aio.UnaryStreamCall[Any, status_pb2.WatchStatusResponse],
) -> AsyncIterator[str]:
    try:
        event = first
        # The first message was taken with read(); gRPC forbids mixing that with iteration.
        while event is not grpc.aio.EOF:  # type: ignore[attr-defined]
            yield format_sse(event)
            event = await stream.read()
    except grpc.aio.AioRpcError as error:
        yield f"event: error\ndata: {json.dumps({'message': error.details()})}\n\n"
    finally:
        stream.cancel()
