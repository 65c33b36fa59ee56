"""The gateway's JSON bodies as pydantic models: the OpenAPI description is generated from them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pixpipe.domain import Effort, OutputFormat
from pixpipe_services.gateway import examples

RequestStateName = Literal["pending", "processing", "completed", "failed", "unspecified"]
ImageStateName = Literal["pending", "processing", "completed", "failed", "unspecified"]


class _Open(BaseModel):
    # The status JSON may grow fields (DESIGN §6 calls it a superset); clients ignore the rest.
    model_config = ConfigDict(extra="allow")


class UploadAnswer(BaseModel):
    request_id: str = Field(description="UUID of the new request")
    message: str = Field(examples=["File uploaded successfully"])
    image_count: int = Field(ge=0)


class ImageStatus(_Open):
    image_id: str
    serial_number: int
    product_name: str
    input_url: str
    output_url: str | None
    status: ImageStateName
    error: str | None
    bytes_in: int
    bytes_out: int
    position: int
    quality_used: int | None = None
    encoder: str | None = None
    effort: Effort | None = None
    score: float | None = None


class Options(_Open):
    quality: int | Literal["auto"] | None = None
    max_width: int | None = None
    max_height: int | None = None
    format: OutputFormat | None = None
    effort: Effort | None = None
    target_score: float | None = None
    measure_quality: bool | None = None


class WebhookStatus(_Open):
    url: str
    state: str
    attempts: int
    last_status_code: int | None
    last_error: str | None


class RequestStatus(_Open):
    """The status JSON of DESIGN §6, with one page of images."""

    request_id: str
    status: RequestStateName
    total: int
    completed: int
    failed: int
    created_at: str | None = None
    completed_at: str | None
    file_name: str | None = None
    version: int
    options: Options | None = None
    images: list[ImageStatus]
    webhook: WebhookStatus | None = None
    next_page_token: str | None = Field(description="Pass as page_token for the next page; "
                                                    "null on the last page")


class RequestSummary(BaseModel):
    request_id: str
    status: RequestStateName
    total: int
    completed: int
    failed: int
    created_at: str | None
    completed_at: str | None
    file_name: str | None


class RecentRequests(BaseModel):
    requests: list[RequestSummary]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    not_ready: list[str] | None = Field(default=None, description="Only when not ready")
    checks: dict[str, str]


class ErrorDetail(BaseModel):
    code: int = Field(description="The HTTP status")
    status: str = Field(description="The canonical gRPC code name")
    message: str
    details: list[dict[str, Any]] = Field(description="google.rpc details, such as BadRequest")


class Fault(BaseModel):
    line: int
    column: int
    field: str
    reason: str


class ErrorBody(BaseModel):
    """google.rpc.Status as JSON; a refused CSV also lists every fault in ``errors``."""

    error: ErrorDetail
    errors: list[Fault] | None = Field(default=None, description="Only for a refused CSV")


def error_response(description: str, example: dict[str, Any],
                   headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """One entry of a route's ``responses``: an ErrorBody with an example."""
    entry: dict[str, Any] = {"model": ErrorBody, "description": description,
                             "content": {"application/json": {"example": example}}}
    if headers:
        entry["headers"] = headers
    return entry


RETRY_AFTER_HEADER = {"Retry-After": {"description": "Seconds to wait before trying again",
                                      "schema": {"type": "integer"}}}
UNAUTHENTICATED = error_response(
    "PIXPIPE_API_TOKEN is set and the bearer token is missing or wrong",
    examples.error_body(401, "UNAUTHENTICATED", "missing or wrong API token"))
NOT_FOUND = error_response("unknown request",
                           examples.error_body(404, "NOT_FOUND",
                                               f"no request {examples.REQUEST_ID}"))
MALFORMED = error_response("a parameter is out of range or malformed",
                           examples.error_body(400, "INVALID_ARGUMENT",
                                               "quality: Input should be less than or equal "
                                               "to 95"))
UNAVAILABLE = error_response("a service behind the gateway is unavailable",
                             examples.error_body(503, "UNAVAILABLE",
                                                 "failed to connect to all addresses"))
TOO_MANY = error_response("too many at once; try again after Retry-After seconds",
                          examples.error_body(429, "RESOURCE_EXHAUSTED",
                                              "too many uploads at once"),
                          headers=RETRY_AFTER_HEADER)


class StatusEvent(BaseModel):
    """One Server-Sent Event of ``/status/{request_id}/events``."""

    id: str | None = Field(default=None, description="The request's version after this event; "
                                                     "send it back as Last-Event-ID to resume")
    event: Literal["snapshot", "image", "completed", "error"]
    data: str = Field(description="The event as JSON: a snapshot or completion carries the "
                                  "status JSON in `request`",
                      json_schema_extra={"contentMediaType": "application/json"})
