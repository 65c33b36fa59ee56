"""``GET /requests``: the most recent requests, newest first."""

from __future__ import annotations

from typing import Annotated

import grpc
from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from pixpipe.status_messages import request_to_json
from pixpipe.v1 import status_pb2
from pixpipe_services.gateway import examples
from pixpipe_services.gateway.dependencies import Clients, require_api_token
from pixpipe_services.gateway.errors import response_for_rpc_error
from pixpipe_services.gateway.models import (
    UNAUTHENTICATED,
    UNAVAILABLE,
    RecentRequests,
    RequestSummary,
)

MAX_RECENT = 100

router = APIRouter(tags=["requests"], dependencies=[Depends(require_api_token)],
                   responses={401: UNAUTHENTICATED, 503: UNAVAILABLE})


@router.get("/requests", summary="Recent requests, newest first", response_model=RecentRequests,
            responses={200: {"content": {"application/json": {"example": examples.REQUESTS}}}})
async def recent_requests(
    clients: Clients,
    limit: Annotated[int, Query(description=f"How many; taken as 1 to {MAX_RECENT}")] = 20,
) -> RecentRequests | JSONResponse:
    try:
        answer: status_pb2.ListRequestsResponse = await clients.status.ListRequests(
            status_pb2.ListRequestsRequest(limit=max(1, min(limit, MAX_RECENT))),
            metadata=clients.metadata, timeout=30)
    except grpc.aio.AioRpcError as error:
        return response_for_rpc_error(error)
    return RecentRequests(requests=[RequestSummary.model_validate(request_to_json(message))
                                    for message in answer.requests])
