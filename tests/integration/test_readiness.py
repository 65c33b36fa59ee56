"""``GET /readyz`` against real gRPC servers whose health and database answers the test sets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from pixpipe.database_health import DATABASE_HEALTH_SERVICE, report_database_health
from pixpipe.db.engine import create_engine
from pixpipe.settings import Settings
from pixpipe_services.gateway.app import create_app
from pixpipe_services.gateway.readiness import INGEST_SERVICE, STATUS_SERVICE

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Services:
    """An ingest and a status server that offer health checking, as the real ones do."""

    def __init__(self) -> None:
        self.ingest_health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.status_health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.ingest_server = grpc.aio.server()
        self.status_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.ingest_health, self.ingest_server)
        health_pb2_grpc.add_HealthServicer_to_server(self.status_health, self.status_server)
        self.ingest_port = self.ingest_server.add_insecure_port("127.0.0.1:0")
        self.status_port = self.status_server.add_insecure_port("127.0.0.1:0")

    async def serving(self, ingest: bool, status: bool, database: bool = True) -> None:
        await self.ingest_health.set(INGEST_SERVICE, SERVING if ingest else NOT_SERVING)
        await self.status_health.set(STATUS_SERVICE, SERVING if status else NOT_SERVING)
        await self.status_health.set(DATABASE_HEALTH_SERVICE,
                                     SERVING if database else NOT_SERVING)


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
                             base_url="http://localhost")


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


async def test_a_database_gone_after_the_start_is_not_ready(
        tmp_path: Path, services: Services) -> None:
    await services.serving(ingest=True, status=True, database=False)
    async with gateway(tmp_path, services.ingest_port, services.status_port) as client:
        answer = await client.get("/readyz")

    assert answer.status_code == 503
    assert answer.json()["checks"]["database"] == "NOT_SERVING"


async def test_the_notifier_reports_whether_its_database_answers(database_url: str) -> None:
    """What the notifier keeps in its health service: a real database, and one not there."""
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for url, expected in ((database_url, SERVING),
                                  ("postgresql://nobody@127.0.0.1:1/gone", NOT_SERVING)):
                engine = create_engine(url)
                stop = asyncio.Event()
                reporter = asyncio.create_task(report_database_health(
                    servicer, engine, stop, interval=0.05))
                try:
                    await until_health(channel, expected)
                finally:
                    stop.set()
                    await reporter
                    await engine.dispose()
    finally:
        await server.stop(None)


async def until_health(channel: grpc.aio.Channel, expected: int) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    async with asyncio.timeout(10):
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):  # NOT_FOUND before the first check
                answer = await stub.Check(
                    health_pb2.HealthCheckRequest(service=DATABASE_HEALTH_SERVICE))
                if answer.status == expected:
                    return
            await asyncio.sleep(0.05)
