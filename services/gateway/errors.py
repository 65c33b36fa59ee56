"""Maps gRPC errors to HTTP responses shaped like google.rpc.Status, in one place."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import grpc
from fastapi.responses import JSONResponse
from google.protobuf.json_format import MessageToDict

from pixpipe.call_limits import retry_delay_seconds
from pixpipe.grpc_errors import bad_request_details, violation_to_fault

# https://cloud.google.com/apis/design/errors#handling_errors — the canonical mapping.
HTTP_STATUS_FOR_GRPC = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


GRPC_CODE_FOR_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED, 409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED, 500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def error_body(code: grpc.StatusCode, message: str,
               details: list[dict[str, Any]] | None = None, *,
               http_status: int | None = None) -> dict[str, Any]:
    status = http_status or HTTP_STATUS_FOR_GRPC.get(code, 500)
    return {"error": {"code": status, "status": code.name,
                      "message": message, "details": [] if details is None else details}}


def error_response(code: grpc.StatusCode, message: str, *, http_status: int | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = error_body(code, message, http_status=http_status)
    return JSONResponse(body, status_code=body["error"]["code"], headers=headers)


def response_for_rpc_error(error: grpc.aio.AioRpcError) -> JSONResponse:
    """The HTTP answer for a failed gRPC call, keeping BadRequest details and the fault list."""
    code = error.code()
    violations = bad_request_details(error) if code == grpc.StatusCode.INVALID_ARGUMENT else []
    details: list[dict[str, Any]] = []
    body = error_body(code, error.details() or code.name, details)
    if violations:
        from google.rpc import error_details_pb2

        bad_request = error_details_pb2.BadRequest(field_violations=violations)
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest",
                        **MessageToDict(bad_request)})
        body["errors"] = [
            {"line": fault.line, "column": fault.column, "field": fault.field,
             "reason": fault.reason}
            for fault in map(violation_to_fault, violations)
        ]
    # A service past its concurrency cap says when to come back (google.rpc.RetryInfo).
    delay = retry_delay_seconds(error) if code == grpc.StatusCode.RESOURCE_EXHAUSTED else None
    headers = {"Retry-After": str(max(1, math.ceil(delay)))} if delay is not None else None
    return JSONResponse(body, status_code=body["error"]["code"], headers=headers)
