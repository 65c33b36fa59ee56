"""The REST shim: builds the FastAPI app from its routers over the ingest and status services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import grpc
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, Counter
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

import pixpipe
from pixpipe.client import PixpipeClient, ServerAddresses
from pixpipe.settings import NetworkSettings, Settings
from pixpipe_services.gateway.dependencies import GatewayLimits
from pixpipe_services.gateway.errors import (
    GRPC_CODE_FOR_HTTP,
    error_body,
    error_response,
    response_for_rpc_error,
)
from pixpipe_services.gateway.models import MALFORMED
from pixpipe_services.gateway.routers import pages, requests, status, uploads
from pixpipe_services.gateway.routers.pages import STATIC_DIR
from pixpipe_services.gateway.stored_images import mount_processed_images

# Where a loopback-only gateway may be reached from: a page on any other host name (DNS
# rebinding) is refused, whatever address that name resolves to.
LOOPBACK_BIND_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
LOOPBACK_HOST_NAMES = ("localhost", "127.0.0.1", "[::1]")


def allowed_hosts(network: NetworkSettings) -> list[str] | None:
    """The Host header values the gateway answers; None for any."""
    if network.allowed_hosts:
        return list(network.allowed_hosts)
    if network.bind_host not in LOOPBACK_BIND_HOSTS:
        return None
    hosts = list(LOOPBACK_HOST_NAMES)
    public = urlsplit(network.public_base_url).hostname
    if public:
        hosts.append(f"[{public}]" if ":" in public else public)
    return hosts


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    addresses = ServerAddresses(ingest=settings.network.resolved_ingest_address,
                                status=settings.network.resolved_status_address)
    async with PixpipeClient(addresses, api_token=settings.auth.api_token) as clients:
        app.state.clients = clients
        try:
            yield
        finally:
            app.state.clients = None


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="pixpipe", version=pixpipe.__version__, lifespan=lifespan,
                  description="Bulk product-image compression: upload a CSV of image URLs, "
                              "follow its progress, download the results.")
    app.state.settings = settings
    app.state.limits = GatewayLimits()
    registry = CollectorRegistry()
    app.state.metrics_registry = registry
    http_requests = Counter("pixpipe_gateway_http_requests", "HTTP requests handled",
                            ["method", "route", "status"], registry=registry)

    # Each router says whether its routes need the API token: uploads, status and requests
    # do; pages (/, /healthz, /readyz, /metrics), /static, /processed_images and the
    # OpenAPI description (/docs, /openapi.json) do not.
    app.include_router(uploads.router)
    app.include_router(status.router)
    app.include_router(requests.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    mount_processed_images(app, settings.storage, api_keys=settings.auth.api_keys)

    @app.middleware("http")
    async def count_requests(request: Request,
                             call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        http_requests.labels(request.method, getattr(route, "path", "unmatched"),
                             str(response.status_code)).inc()
        return response

    hosts = allowed_hosts(settings.network)
    if hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)

    add_error_handlers(app)
    app.openapi = lambda: openapi_without_422(app)  # type: ignore[method-assign]
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every refusal is shaped like google.rpc.Status (DESIGN §1, docs/design.md)."""

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
        # The headers carry Allow on a 405, Retry-After on a 429, WWW-Authenticate on a 401.
        return error_response(code, str(error.detail), http_status=error.status_code,
                              headers=error.headers)

    @app.exception_handler(grpc.aio.AioRpcError)
    async def rpc_error(_request: Request, error: grpc.aio.AioRpcError) -> JSONResponse:
        return response_for_rpc_error(error)


def openapi_without_422(app: FastAPI) -> dict[str, Any]:
    """The generated description, with our 400 in place of FastAPI's 422."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version,
                             description=app.description, routes=app.routes)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                if responses.pop("422", None) is not None and "400" not in responses:
                    responses["400"] = {
                        "description": MALFORMED["description"],
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/ErrorBody"},
                            **MALFORMED["content"]["application/json"]}}}
        schema.get("components", {}).get("schemas", {}).pop("HTTPValidationError", None)
        schema.get("components", {}).get("schemas", {}).pop("ValidationError", None)
        app.openapi_schema = schema
    return app.openapi_schema
