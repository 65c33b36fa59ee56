"""``POST /upload/``: the multipart CSV, read within the size limit and streamed to ingest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import grpc
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema
from starlette.datastructures import UploadFile
from starlette.types import Message, Receive

from pixpipe.client.uploads import UPLOAD_CHUNK_BYTES, byte_chunks, upload_requests_from
from pixpipe.domain import Effort, OutputFormat, RequestOptions
from pixpipe.status_messages import options_to_proto
from pixpipe.v1 import ingest_pb2, options_pb2
from pixpipe_services.gateway import examples
from pixpipe_services.gateway.dependencies import (
    AppSettings,
    Clients,
    require_api_token,
    upload_slot,
)
from pixpipe_services.gateway.errors import response_for_rpc_error
from pixpipe_services.gateway.models import (
    TOO_MANY,
    UNAUTHENTICATED,
    UNAVAILABLE,
    UploadAnswer,
    error_response,
)

# Room for the boundaries, part headers and option fields around a CSV at the size limit.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# A quality of 1-95, or auto (the lowest that reaches target_score).
QUALITY_PATTERN = r"^(auto|[1-9]|[1-8][0-9]|9[0-5])$"
# JSON Schema cannot say "serial numbers are unique", so the published pattern describes the
# files whose serials count up from 1; the description states the whole rule.
_CSV_ROW = (r"[1-9][0-9]{0,5},[A-Za-z0-9][A-Za-z0-9 ]{0,40},"
            r"https://img\.example/[a-z0-9]{1,16}\.(jpg|png)\r?\n")
CSV_PATTERN = (r"^S\. No\.,Product Name,Input Image Urls\r?\n"
               + _CSV_ROW.replace("[1-9][0-9]{0,5}", "1")
               + "(" + _CSV_ROW.replace("[1-9][0-9]{0,5}", "2")
               + "(" + _CSV_ROW.replace("[1-9][0-9]{0,5}", "3") + ")?)?$")
# A public webhook receiver by host name (an address literal or a name of this machine is
# refused when private networks are off).
WEBHOOK_PATTERN = (r"^https?://[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20})*\.[a-z]{2,6}"
                   r"(/[A-Za-z0-9._~-]*)*$")

router = APIRouter(tags=["uploads"], dependencies=[Depends(require_api_token)],
                   responses={401: UNAUTHENTICATED})


class UploadOptions(BaseModel):
    """The form fields beside ``file``."""

    model_config = ConfigDict(extra="ignore")

    # The ingest service owns the URL rule (loopback receivers are fine where private
    # networks are allowed); the pattern only tells clients what is accepted everywhere.
    webhook_url: str | SkipJsonSchema[None] = Field(
        default=None, description="Receives the status JSON when the request finishes "
        "(Standard Webhooks)", json_schema_extra={"pattern": WEBHOOK_PATTERN, "maxLength": 2048})
    quality: Annotated[str, Field(pattern=QUALITY_PATTERN)] | SkipJsonSchema[None] = Field(
        default=None, description="1-95 or auto")
    max_width: Annotated[int, Field(ge=1, le=65535)] | SkipJsonSchema[None] = None
    max_height: Annotated[int, Field(ge=1, le=65535)] | SkipJsonSchema[None] = None
    format: OutputFormat | SkipJsonSchema[None] = None
    effort: Effort | SkipJsonSchema[None] = None
    target_score: Annotated[float, Field(ge=0, le=100)] | SkipJsonSchema[None] = None
    measure_quality: bool | SkipJsonSchema[None] = Field(
        default=None, description="with a fixed quality, report each output's score too")


class UploadForm:
    """A parsed upload: the CSV (a file part spooled within the size limit, or a text part)
    and its options."""

    def __init__(self, csv: UploadFile | str, options: UploadOptions) -> None:
        self.csv = csv
        self.options = options

    @property
    def file_name(self) -> str:
        return (self.csv.filename or "") if isinstance(self.csv, UploadFile) else ""

    async def chunks(self) -> AsyncIterator[bytes]:
        if isinstance(self.csv, str):
            for chunk in byte_chunks(self.csv.encode()):
                yield chunk
            return
        while chunk := await self.csv.read(UPLOAD_CHUNK_BYTES):
            yield chunk


def upload_request_body() -> dict[str, Any]:
    schema = UploadOptions.model_json_schema()
    for field in schema["properties"].values():
        field.pop("default", None)  # a multipart field is sent or left out, never null
    schema["title"] = "Upload"
    schema["description"] = "The CSV and the options for every image in it"
    schema["required"] = ["file"]
    schema["properties"] = {"file": {
        "type": "string", "contentMediaType": "text/csv", "pattern": CSV_PATTERN,
        "description": "CSV with the columns S. No. (unique positive integers), Product Name "
                       "(non-empty) and Input Image Urls (http/https URLs, comma-separated "
                       "in one cell); UTF-8, one header row."},
        **schema["properties"]}
    return {"requestBody": {"required": True,
                            "content": {"multipart/form-data": {"schema": schema}}}}


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"the upload exceeds the size limit of {limit} bytes")


def _receive_within(receive: Receive, body_limit: int, file_limit: int) -> Receive:
    received = 0

    async def receive_within_limit() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > body_limit:
                raise _too_large(file_limit)
        return message
    return receive_within_limit


def _invalid(errors: list[dict[str, Any]]) -> RequestValidationError:
    # The form is flat: the field is the first step of a location ("quality", "constrained-str").
    return RequestValidationError([{**error, "loc": ("body", error["loc"][0])}
                                   for error in errors])


async def read_upload_form(request: Request, settings: AppSettings,
                           ) -> AsyncIterator[UploadForm]:
    """Reads the multipart body as it arrives, refusing it (413) the moment it passes the limit,
    so nothing larger than the CSV limit is ever spooled."""
    limit = settings.limits.max_upload_bytes
    body_limit = limit + MULTIPART_OVERHEAD_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > body_limit:
        raise _too_large(limit)
    within = Request(request.scope, _receive_within(request.receive, body_limit, limit))
    form = await within.form(max_files=1, max_fields=32)
    try:
        file = form.get("file")
        fields = {name: value for name, value in form.multi_items()
                  if name != "file" and isinstance(value, str) and value != ""}
        errors: list[dict[str, Any]] = []
        if not isinstance(file, UploadFile | str):
            errors.append({"type": "missing", "loc": ("file",), "msg": "Field required",
                           "input": None})
        try:
            options = UploadOptions.model_validate(fields)
        except ValidationError as error:
            errors.extend(dict(item) for item in error.errors())
        if errors:
            raise _invalid(errors)
        assert isinstance(file, UploadFile | str)
        size = (file.size or 0) if isinstance(file, UploadFile) else len(file.encode())
        if size > limit:
            raise _too_large(limit)
        yield UploadForm(file, options)
    finally:
        await form.close()


def _processing_options(options: UploadOptions) -> options_pb2.ProcessingOptions:
    """The form's options as the contract carries them (one builder: status_messages)."""
    quality: int | Literal["auto"] | None = (
        "auto" if options.quality == "auto" else
        None if options.quality is None else int(options.quality))
    return options_to_proto(RequestOptions(
        quality=quality, max_width=options.max_width, max_height=options.max_height,
        format=options.format, effort=options.effort, target_score=options.target_score,
        measure_quality=options.measure_quality))


def _upload_messages(form: UploadForm) -> AsyncIterator[ingest_pb2.UploadRequest]:
    return upload_requests_from(ingest_pb2.UploadMetadata(
        file_name=form.file_name, webhook_url=form.options.webhook_url or "",
        options=_processing_options(form.options)), form.chunks())


@router.post(
    "/upload/", summary="Upload a CSV of products and image URLs", response_model=UploadAnswer,
    openapi_extra=upload_request_body(),
    responses={
        200: {"content": {"application/json": {"example": examples.UPLOAD}}},
        400: error_response("the CSV or an option is invalid; every fault is listed",
                            examples.CSV_REFUSED),
        413: error_response("the body is over PIXPIPE_MAX_UPLOAD_BYTES", examples.error_body(
            413, "RESOURCE_EXHAUSTED", "the upload exceeds the size limit of 52428800 bytes")),
        429: TOO_MANY,
        503: UNAVAILABLE,
    })
async def upload(
    _slot: Annotated[None, Depends(upload_slot)],
    form: Annotated[UploadForm, Depends(read_upload_form)],
    clients: Clients,
) -> UploadAnswer | JSONResponse:
    try:
        answer: ingest_pb2.UploadResponse = await clients.ingest.Upload(
            _upload_messages(form), metadata=clients.metadata, timeout=300)
    except grpc.aio.AioRpcError as error:
        return response_for_rpc_error(error)
    return UploadAnswer(request_id=answer.request_id, message=answer.message,
                        image_count=answer.image_count)

