"""``GET /readyz`` against real gRPC servers whose health and database answers the test sets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from pixpipe.embedded_nats import free_port
from pixpipe.settings import Settings
from pixpipe.v1 import status_pb2, status_pb2_grpc
from services.gateway.app import create_app
from services.gateway.readiness import INGEST_SERVICE, STATUS_SERVICE

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class StatusWithEmptyDatabase(status_pb2_grpc.StatusServiceServicer):
    """Answers every GetStatus as a status service whose database has no such request."""

    def __init__(self) -> None:
        self.authorization: list[str] = []

    async def GetStatus(self, request: status_pb2.GetStatusRequest,
                        context: grpc.aio.ServicerContext[object, object],
                        ) -> status_pb2.GetStatusResponse:
        self.authorization.append(dict(context.invocation_metadata() or ()).get(
            "authorization", ""))
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no request {request.request_id}")
        raise AssertionError("abort returns only by raising")


class Services:
    """An ingest and a status server that offer health checking, as the real ones do."""

    def __init__(self) -> None:
        self.ingest_health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.status_health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.status = StatusWithEmptyDatabase()  # type: ignore[abstract]  # GetStatus only
        self.ingest_server = grpc.aio.server()
        self.status_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.ingest_health, self.ingest_server)
        health_pb2_grpc.add_HealthServicer_to_server(self.status_health, self.status_server)
        status_pb2_grpc.add_StatusServiceServicer_to_server(self.status, self.status_server)
        self.ingest_port = self.ingest_server.add_insecure_port("127.0.0.1:0")
        self.status_port = self.status_server.add_insecure_port("127.0.0.1:0")

    async def serving(self, ingest: bool, status: bool) -> None:
        await self.ingest_health.set(INGEST_SERVICE, SERVING if ingest else NOT_SERVING)
        await self.status_health.set(STATUS_SERVICE, SERVING if status else NOT_SERVING)


@pytest.fixture
async def services() -> AsyncIterator[Services]:
    running = Services()
    await running.ingest_server.start()
    await running.status_server.start()
    yield running
    await running.ingest_server.stop(None)
    await running.status_server.stop(None)


def gateway(tmp_path: Path, ingest_port: int, status_port: int,
            api_token: str | None = None) -> httpx.AsyncClient:
    settings = Settings(data_dir=tmp_path, api_token=api_token,
                        ingest_address=f"127.0.0.1:{ingest_port}",
                        status_address=f"127.0.0.1:{status_port}")
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings)),
                             base_url="http://gateway")


async def test_ready_only_when_both_services_serve_and_the_database_answers(
        tmp_path: Path, services: Services) -> None:
    async with gateway(tmp_path, services.ingest_port, services.status_port,
                       api_token="s3cret") as client:
        await services.serving(ingest=True, status=True)
        ready = await client.get("/readyz")  # public, like /healthz
        await services.serving(ingest=False, status=True)
        ingest_draining = await client.get("/readyz")

    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready",
                            "checks": {"ingest": "ok", "status": "ok", "database": "ok"}}
    # The database probe is a real call, so it carries the token like any other.
    assert services.status.authorization == ["Bearer s3cret"] * 2
    assert ingest_draining.status_code == 503
    assert ingest_draining.json() == {
        "status": "not ready", "not_ready": ["ingest"],
        "checks": {"ingest": "NOT_SERVING", "status": "ok", "database": "ok"}}


async def test_a_status_service_not_yet_serving_leaves_the_database_unchecked(
        tmp_path: Path, services: Services) -> None:
    await services.serving(ingest=True, status=False)
    async with gateway(tmp_path, services.ingest_port, services.status_port) as client:
        answer = await client.get("/readyz")

    assert answer.status_code == 503
    assert answer.json()["not_ready"] == ["status", "database"]
    assert services.status.authorization == []


async def test_nothing_listening_is_named_not_ready(tmp_path: Path) -> None:
    async with gateway(tmp_path, free_port(), free_port(), api_token="s3cret") as client:
        answer = await client.get("/readyz")

    assert answer.status_code == 503
    body = answer.json()
    assert body["not_ready"] == ["ingest", "status", "database"]
    assert body["checks"]["ingest"].startswith("UNAVAILABLE")
