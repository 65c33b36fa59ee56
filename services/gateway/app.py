"""The REST shim: FastAPI routes over the ingest and status gRPC services."""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import grpc
from fastapi import FastAPI, File, Form, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from pixpipe.client import PixpipeClient, ServerAddresses
from pixpipe.domain import Effort, ImageState, OutputFormat
from pixpipe.paging import MAX_PAGE_SIZE
from pixpipe.settings import Settings
from pixpipe.status_messages import (
    EFFORTS_TO_PROTO,
    FORMATS_TO_PROTO,
    IMAGE_STATES_TO_PROTO,
    PROCESSED_IMAGES_ROUTE,
    request_to_json,
)
from pixpipe.v1 import ingest_pb2, options_pb2, status_pb2
from services.gateway import examples
from services.gateway.errors import (
    GRPC_CODE_FOR_HTTP,
    error_body,
    error_response,
    response_for_rpc_error,
)
from services.gateway.readiness import RESPONSES as READINESS_RESPONSES
from services.gateway.readiness import check_readiness
from services.gateway.sse import status_event_stream
from services.gateway.stored_images import mount_processed_images

UPLOAD_CHUNK_BYTES = 256 * 1024
STATIC_DIR = Path(__file__).with_name("static")
# The page and its assets are public; the API calls it makes carry the token.
_PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/static/",
                 PROCESSED_IMAGES_ROUTE)


def _upload_messages(upload: UploadFile, metadata: ingest_pb2.UploadMetadata,
                     ) -> AsyncIterator[ingest_pb2.UploadRequest]:
    async def messages() -> AsyncIterator[ingest_pb2.UploadRequest]:
        yield ingest_pb2.UploadRequest(metadata=metadata)
        while chunk := await upload.read(UPLOAD_CHUNK_BYTES):
            yield ingest_pb2.UploadRequest(chunk=chunk)
    return messages()


MAX_VERSION = 2**64 - 1  # WatchStatusRequest.after_version is a uint64


def resume_version(last_event_id: str) -> int:
    """The version an SSE reconnect resumes after; anything but a version (a value the browser
    never sent, or past uint64) starts afresh from a snapshot rather than failing."""
    if not (last_event_id.isascii() and last_event_id.isdigit() and len(last_event_id) <= 20):
        return 0
    version = int(last_event_id)
    return version if version <= MAX_VERSION else 0


# A quality of 1-95, or auto (the lowest that reaches target_score).
QUALITY_PATTERN = r"^(auto|[1-9]|[1-8][0-9]|9[0-5])$"


def _processing_options(quality: str | None, max_width: int | None, max_height: int | None,
                        image_format: OutputFormat | None, effort: Effort | None = None,
                        target_score: float | None = None,
                        measure_quality: bool | None = None) -> options_pb2.ProcessingOptions:
    options = options_pb2.ProcessingOptions()
    if quality == "auto":
        options.quality_auto = True
    elif quality is not None:
        options.quality = int(quality)
    if target_score is not None:
        options.target_score = target_score
    if measure_quality:
        options.measure_quality = True
    if max_width is not None:
        options.max_width = max_width
    if max_height is not None:
        options.max_height = max_height
    if image_format:
        options.format = FORMATS_TO_PROTO[image_format]
    if effort:
        options.effort = EFFORTS_TO_PROTO[effort]
    return options


def create_app(settings: Settings) -> FastAPI:
    clients: PixpipeClient | None = None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        nonlocal clients
        addresses = ServerAddresses(ingest=settings.resolved_ingest_address,
                                    status=settings.resolved_status_address)
        async with PixpipeClient(addresses, api_token=settings.api_token) as clients:
            yield

    def grpc_clients() -> PixpipeClient:
        assert clients is not None, "the app is not started"
        return clients

    app = FastAPI(title="pixpipe", version="0.1.0", lifespan=lifespan,
                  description="Bulk product-image compression: upload a CSV of image URLs, "
                              "follow its progress, download the results.")
    registry = CollectorRegistry()
    http_requests = Counter("pixpipe_gateway_http_requests", "HTTP requests handled",
                            ["method", "route", "status"], registry=registry)

    @app.middleware("http")
    async def authenticate_and_count(
        request: Request, call_next: Callable[[Request], Awaitable[Response]],
    ) -> Response:
        # The path the server routes by: request.url is rebuilt from the Host header.
        path: str = request.scope["path"]
        if settings.api_token and path != "/" and not path.startswith(_PUBLIC_PATHS):
            supplied = request.headers.get("authorization", "")
            if not hmac.compare_digest(supplied.encode(),
                                       f"Bearer {settings.api_token}".encode()):
                response: Response = error_response(grpc.StatusCode.UNAUTHENTICATED,
                                                    "missing or wrong API token")
                return response
        response = await call_next(request)
        route = request.scope.get("route")
        http_requests.labels(request.method, getattr(route, "path", "unmatched"),
                             str(response.status_code)).inc()
        return response

    @app.post("/upload/", summary="Upload a CSV of products and image URLs",
              responses=examples.UPLOAD_RESPONSES)
    async def upload(
        file: Annotated[UploadFile, File(description="CSV: S. No., Product Name, "
                                                     "Input Image Urls")],
        webhook_url: Annotated[str | None, Form()] = None,
        quality: Annotated[str | None, Form(pattern=QUALITY_PATTERN,
                                            description="1-95 or auto")] = None,
        max_width: Annotated[int | None, Form(ge=1, le=65535)] = None,
        max_height: Annotated[int | None, Form(ge=1, le=65535)] = None,
        format: Annotated[OutputFormat | None, Form()] = None,
        effort: Annotated[Effort | None, Form()] = None,
        target_score: Annotated[float | None, Form(ge=0, le=100)] = None,
        measure_quality: Annotated[bool | None, Form(
            description="with a fixed quality, report each output's score too")] = None,
    ) -> Any:
        metadata = ingest_pb2.UploadMetadata(
            file_name=file.filename or "", webhook_url=webhook_url or "",
            options=_processing_options(quality, max_width, max_height, format, effort,
                                        target_score, measure_quality))
        try:
            answer: ingest_pb2.UploadResponse = await grpc_clients().ingest.Upload(
                _upload_messages(file, metadata), metadata=grpc_clients().metadata,
                timeout=300)
        except grpc.aio.AioRpcError as error:
            return response_for_rpc_error(error)
        return {"request_id": answer.request_id, "message": answer.message,
                "image_count": answer.image_count}

    @app.get("/status/{request_id}", summary="The status of a request and one page of images",
             responses=examples.STATUS_RESPONSES)
    async def status(
        request_id: str,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE,
                                    description="Images per page")] = MAX_PAGE_SIZE,
        page_token: Annotated[str, Query(description="next_page_token of the page before; "
                                                     "empty for the first")] = "",
        status: Annotated[ImageState | None, Query(description="Only images in this "
                                                               "state")] = None,
    ) -> Any:
        query = status_pb2.GetStatusRequest(
            request_id=request_id, page_size=limit, page_token=page_token,
            status_filter=IMAGE_STATES_TO_PROTO[status] if status
            else status_pb2.IMAGE_STATE_UNSPECIFIED)
        try:
            answer: status_pb2.GetStatusResponse = await grpc_clients().status.GetStatus(
                query, metadata=grpc_clients().metadata, timeout=30)
        except grpc.aio.AioRpcError as error:
            return response_for_rpc_error(error)
        return Response(json.dumps(request_to_json(answer.status), separators=(",", ":")),
                        media_type="application/json")

    @app.get("/status/{request_id}/events", summary="Server-Sent Events of a request",
             response_class=StreamingResponse, responses=examples.EVENTS_RESPONSES)
    async def events(request_id: str, request: Request) -> Response:
        after = resume_version(request.headers.get("last-event-id", ""))
        stream = grpc_clients().status.WatchStatus(
            status_pb2.WatchStatusRequest(request_id=request_id, after_version=after),
            metadata=grpc_clients().metadata)
        try:
            first = await stream.read()
        except grpc.aio.AioRpcError as error:
            return response_for_rpc_error(error)
        return StreamingResponse(status_event_stream(first, stream),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    @app.get("/status/{request_id}/csv", summary="The output CSV of a finished request",
             response_class=Response, responses=examples.CSV_RESPONSES)
    async def output_csv(request_id: str) -> Response:
        call = grpc_clients().status.ExportCsv(
            status_pb2.ExportCsvRequest(request_id=request_id,
                                        base_url=settings.public_base_url),
            metadata=grpc_clients().metadata, timeout=300)
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

        return StreamingResponse(chunks(), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="pixpipe-{request_id}.csv"'})

    @app.get("/requests", summary="Recent requests, newest first",
             responses=examples.REQUESTS_RESPONSES)
    async def recent_requests(limit: int = 20) -> Any:
        try:
            answer: status_pb2.ListRequestsResponse = await grpc_clients().status.ListRequests(
                status_pb2.ListRequestsRequest(limit=max(1, min(limit, 100))),
                metadata=grpc_clients().metadata, timeout=30)
        except grpc.aio.AioRpcError as error:
            return response_for_rpc_error(error)
        summaries = []
        for message in answer.requests:
            data = request_to_json(message)
            summaries.append({key: data[key] for key in (
                "request_id", "status", "total", "completed", "failed", "created_at",
                "completed_at", "file_name")})
        return {"requests": summaries}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/healthz", summary="Liveness",
             responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}})
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the services behind the gateway answer",
             responses=READINESS_RESPONSES)
    async def readyz() -> JSONResponse:
        readiness = await check_readiness(settings)
        return JSONResponse(readiness.body(), status_code=200 if readiness.ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    mount_processed_images(app, settings)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError,
                              ) -> JSONResponse:
        # 400 with google.rpc.BadRequest, like every other refusal, rather than FastAPI's 422.
        violations = [{"field": ".".join(str(part) for part in item["loc"][1:]) or "request",
                       "description": item["msg"]} for item in error.errors()]
        body = error_body(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(
            f"{v['field']}: {v['description']}" for v in violations), [
            {"@type": "type.googleapis.com/google.rpc.BadRequest",
             "fieldViolations": violations}])
        return JSONResponse(body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = GRPC_CODE_FOR_HTTP.get(error.status_code, grpc.StatusCode.UNKNOWN)
        return error_response(code, str(error.detail), http_status=error.status_code)

    def openapi_without_422() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    if responses.pop("422", None) is not None and "400" not in responses:
                        responses["400"] = examples.VALIDATION_RESPONSE
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi_without_422  # type: ignore[method-assign]

    @app.exception_handler(grpc.aio.AioRpcError)
    async def rpc_error_handler(_request: Request, error: grpc.aio.AioRpcError,
                                ) -> JSONResponse:
        return response_for_rpc_error(error)

    return app
