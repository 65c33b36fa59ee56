"""The database's health as a gRPC health service of its own, kept current by the notifier.

Readiness asks for it like any other service (no token needed, unlike a status call), and a
database that goes away after the start turns it NOT_SERVING within a few seconds.
"""

from __future__ import annotations

import asyncio
import logging

from grpc_health.v1 import health, health_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pixpipe.runtime import sleep_unless_stopped

log = logging.getLogger(__name__)

DATABASE_HEALTH_SERVICE = "pixpipe.database"
_CHECK_TIMEOUT_SECONDS = 2.0


async def database_answers(engine: AsyncEngine) -> bool:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_SECONDS), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as error:  # any failure means: not ready
        log.warning("database check failed: %s", error.__class__.__name__)
        return False
    return True


async def report_database_health(servicer: health.aio.HealthServicer,  # type: ignore[name-defined]
                                 engine: AsyncEngine, stop: asyncio.Event, *,
                                 interval: float = 2.0) -> None:
    """Until ``stop``: SERVING while the database answers, NOT_SERVING while it does not."""
    while not stop.is_set():
        serving = await database_answers(engine)
        if stop.is_set():
            return
        await servicer.set(DATABASE_HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING
                           if serving else health_pb2.HealthCheckResponse.NOT_SERVING)
        await sleep_unless_stopped(stop, interval)
