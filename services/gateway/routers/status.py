"""A request's status, its Server-Sent Events and its output CSV."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

import grpc
from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import StreamingResponse
from sse_starlette import EventSourceResponse

from pixpipe.domain import ImageState
from pixpipe.paging import MAX_PAGE_SIZE
from pixpipe.status_messages import IMAGE_STATES_TO_PROTO, request_to_json
from pixpipe.v1 import status_pb2
from pixpipe_services.gateway import examples
from pixpipe_services.gateway.dependencies import (
    AppSettings,
    Clients,
    RequestId,
    event_stream_slot,
    require_api_token,
)
from pixpipe_services.gateway.errors import error_response, response_for_rpc_error
from pixpipe_services.gateway.models import (
    MALFORMED,
    NOT_FOUND,
    TOO_MANY,
    UNAUTHENTICATED,
    UNAVAILABLE,
    RequestStatus,
    StatusEvent,
)
from pixpipe_services.gateway.models import error_response as error_entry
from pixpipe_services.gateway.sse import event_stream_response, resume_version

router = APIRouter(tags=["status"], dependencies=[Depends(require_api_token)],
                   responses={400: MALFORMED, 401: UNAUTHENTICATED, 404: NOT_FOUND,
                              503: UNAVAILABLE})


class CsvResponse(StreamingResponse):
    media_type = "text/csv"


@router.get("/status/{request_id}", summary="The status of a request and one page of images",
            response_model=RequestStatus,
            responses={200: {"content": {"application/json": {"example": examples.STATUS}}}})
async def status(
    request_id: RequestId,
    clients: Clients,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE,
                                description="Images per page")] = MAX_PAGE_SIZE,
    page_token: Annotated[str, Query(description="next_page_token of the page before; "
                                                 "empty for the first")] = "",
    status: Annotated[ImageState | None, Query(description="Only images in this "
                                                           "state")] = None,
) -> Response:
    query = status_pb2.GetStatusRequest(
        request_id=request_id, page_size=limit, page_token=page_token,
        status_filter=IMAGE_STATES_TO_PROTO[status] if status
        else status_pb2.IMAGE_STATE_UNSPECIFIED)
    try:
        answer: status_pb2.GetStatusResponse = await clients.status.GetStatus(
            query, metadata=clients.metadata, timeout=30)
    except grpc.aio.AioRpcError as error:
        return response_for_rpc_error(error)
    # Serialised once, as built: RequestStatus describes it, but validating a page of 1000
    # images through the model again would only cost time.
    return Response(json.dumps(request_to_json(answer.status), separators=(",", ":")),
                    media_type="application/json")


@router.get("/status/{request_id}/events", summary="Server-Sent Events of a request",
            response_class=EventSourceResponse,
            responses={200: {"description": "Server-Sent Events: a snapshot, image events, "
                                            "then completed",
                             "content": {"text/event-stream": {
                                 "schema": StatusEvent.model_json_schema(),
                                 "example": examples.EVENTS}}},
                       429: TOO_MANY})
async def events(
    request_id: RequestId,
    clients: Clients,
    _slot: Annotated[None, Depends(event_stream_slot)],
    last_event_id: Annotated[str | None, Header(
        alias="Last-Event-ID", description="The id of the last event seen: the stream resumes "
        "after it; anything else starts from a snapshot")] = None,
) -> Response:
    stream = clients.status.WatchStatus(
        status_pb2.WatchStatusRequest(request_id=request_id,
                                      after_version=resume_version(last_event_id or "")),
        metadata=clients.metadata)
    try:
        first = await stream.read()
    except grpc.aio.AioRpcError as error:
        return response_for_rpc_error(error)
    return event_stream_response(first, stream)


@router.get("/status/{request_id}/csv", summary="The output CSV of a finished request",
            response_class=CsvResponse,
            responses={200: {"description": "the uploaded columns plus Output Image Urls and "
                                            "the receipts",
                             "content": {"text/csv": {"schema": {"type": "string"},
                                                      "example": examples.OUTPUT_CSV}}},
                       409: error_entry("the request is still running", examples.error_body(
                           409, "FAILED_PRECONDITION",
                           f"request {examples.REQUEST_ID} is still processing"))})
async def output_csv(request_id: RequestId, clients: Clients, settings: AppSettings,
                     ) -> Response:
    call = clients.status.ExportCsv(
        status_pb2.ExportCsvRequest(request_id=request_id,
                                    base_url=settings.network.public_base_url),
        metadata=clients.metadata, timeout=300)
    try:
        # The first chunk settles whether the request is known and finished.
        first = await call.read()
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
            # Not finished yet: a conflict with the resource's current state.
            return error_response(error.code(), error.details() or "", http_status=409)
        return response_for_rpc_error(error)

    async def chunks() -> AsyncIterator[bytes]:
        message = first
        try:
            while isinstance(message, status_pb2.ExportCsvResponse):
                yield message.chunk
                message = await call.read()
        finally:
            call.cancel()

    return CsvResponse(chunks(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="pixpipe-{request_id}.csv"'})
