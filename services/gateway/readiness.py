"""Readiness (``GET /readyz``): the gateway takes uploads once the services behind it can."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pixpipe.database_health import DATABASE_HEALTH_SERVICE
from pixpipe.settings import NetworkSettings
from pixpipe.v1 import ingest_pb2, status_pb2

CHECK_TIMEOUT_SECONDS = 2.0
INGEST_SERVICE = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
STATUS_SERVICE = status_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name
_OK = "ok"


@dataclass(frozen=True)
class Readiness:
    """Each check's outcome: ``"ok"`` or why it failed."""

    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        return all(outcome == _OK for outcome in self.checks.values())

    def body(self) -> dict[str, Any]:
        if self.ready:
            return {"status": "ready", "checks": self.checks}
        return {"status": "not ready",
                "not_ready": [name for name, outcome in self.checks.items() if outcome != _OK],
                "checks": self.checks}


async def check_readiness(network: NetworkSettings) -> Readiness:
    """Ask the ingest and status services whether they serve, and the database whether it answers.

    The services report SERVING only once they are connected to JetStream (they connect
    before they start listening), and only until they begin to shut down. The status service
    also reports the database it shares with ingest (``pixpipe.database``), checked every few
    seconds, so no API token is needed to ask.
    """
    async with grpc.aio.insecure_channel(network.resolved_ingest_address) as ingest, \
            grpc.aio.insecure_channel(network.resolved_status_address) as status:
        ingest_serving, status_serving = await asyncio.gather(
            _outcome(_serving(ingest, INGEST_SERVICE)), _outcome(_serving(status, STATUS_SERVICE)))
        database = (await _outcome(_serving(status, DATABASE_HEALTH_SERVICE))
                    if status_serving == _OK else "not checked: the status service is not ready")
    return Readiness({"ingest": ingest_serving, "status": status_serving, "database": database})


async def _serving(channel: grpc.aio.Channel, service: str) -> str:
    response: health_pb2.HealthCheckResponse = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=CHECK_TIMEOUT_SECONDS)
    if response.status == health_pb2.HealthCheckResponse.SERVING:
        return _OK
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return name


async def _outcome(check: Awaitable[str]) -> str:
    try:
        return await check
    except grpc.aio.AioRpcError as error:
        return f"{error.code().name}: {(error.details() or '')[:200]}"
