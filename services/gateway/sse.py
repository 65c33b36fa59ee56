"""Turns a WatchStatus stream into Server-Sent Events (framed by sse-starlette)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from sse_starlette import EventSourceResponse, ServerSentEvent

from pixpipe.status_messages import event_to_json
from pixpipe.v1 import status_pb2

MAX_VERSION = 2**64 - 1  # WatchStatusRequest.after_version is a uint64
# A comment line this often keeps proxies from closing a quiet stream.
PING_SECONDS = 15
# Lines end in LF alone, as they always have here (the spec allows CRLF, LF or CR).
SEP = "\n"


def resume_version(last_event_id: str) -> int:
    """The version an SSE reconnect resumes after; anything but a version (a value the browser
    never sent, or past uint64) starts afresh from a snapshot rather than failing."""
    if not (last_event_id.isascii() and last_event_id.isdigit() and len(last_event_id) <= 20):
        return 0
    version = int(last_event_id)
    return version if version <= MAX_VERSION else 0


def to_server_sent_event(event: status_pb2.WatchStatusResponse) -> ServerSentEvent:
    # The id is the version, so a browser's Last-Event-ID reconnect resumes after it.
    return ServerSentEvent(id=str(event.version), event=event.WhichOneof("event") or "message",
                           data=json.dumps(event_to_json(event), separators=(",", ":")),
                           sep=SEP)


async def status_events(
    first: Any, stream: grpc.aio.UnaryStreamCall[Any, status_pb2.WatchStatusResponse],
) -> AsyncIterator[ServerSentEvent]:
    try:
        event = first
        # The first message was taken with read(); gRPC forbids mixing that with iteration.
        while event is not grpc.aio.EOF:  # type: ignore[attr-defined]
            yield to_server_sent_event(event)
            event = await stream.read()
    except grpc.aio.AioRpcError as error:
        yield ServerSentEvent(event="error", data=json.dumps({"message": error.details()}),
                              sep=SEP)
    finally:
        stream.cancel()


def event_stream_response(
    first: Any, stream: grpc.aio.UnaryStreamCall[Any, status_pb2.WatchStatusResponse],
) -> EventSourceResponse:
    return EventSourceResponse(status_events(first, stream), sep=SEP, ping=PING_SECONDS,
                               headers={"Cache-Control": "no-cache"})
