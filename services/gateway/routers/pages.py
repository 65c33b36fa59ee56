"""The public routes: the web page, liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pixpipe_services.gateway import examples
from pixpipe_services.gateway.dependencies import AppSettings
from pixpipe_services.gateway.models import Health, Readiness
from pixpipe_services.gateway.readiness import check_readiness

STATIC_DIR = Path(__file__).parent.parent / "static"

# No token: the page and its assets are public (the API calls it makes carry the token), and
# probes and scrapers hold none.
router = APIRouter(tags=["service"])


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


@router.get("/healthz", summary="Liveness", response_model=Health,
            responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}})
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", summary="Readiness: the services behind the gateway answer",
            response_model=Readiness, responses={
                200: {"description": "Every service an upload needs answers",
                      "content": {"application/json": {"example": examples.READY}}},
                503: {"model": Readiness, "description": "Something an upload needs is not "
                      "ready; `not_ready` names it",
                      "content": {"application/json": {"example": examples.NOT_READY}}}})
async def readyz(settings: AppSettings) -> JSONResponse:
    readiness = await check_readiness(settings.network)
    return JSONResponse(readiness.body(), status_code=200 if readiness.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry),
                    media_type=CONTENT_TYPE_LATEST)
