"""Entry point of the ingest service (``pixpipe-ingest``)."""

from __future__ import annotations

import asyncio
import logging

from pixpipe.auth import authenticator_for
from pixpipe.bus import Bus
from pixpipe.db.engine import engine_from_settings, session_factory
from pixpipe.db.repository import Repository
from pixpipe.grpc_server import GrpcServer
from pixpipe.metrics import IngestMetrics, serve_metrics
from pixpipe.runtime import run_until_signalled, start_service_process
from pixpipe.settings import Settings
from pixpipe.v1 import ingest_pb2, ingest_pb2_grpc
from pixpipe_services.ingest.servicer import IngestServicer

log = logging.getLogger(__name__)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    engine = engine_from_settings(settings.storage)
    repository = Repository(session_factory(engine))
    bus = await Bus.connect(settings.nats, name="pixpipe-ingest")
    metrics = IngestMetrics()
    network = settings.network
    serve_metrics(metrics.registry, network.bind_host, settings.observability.metrics_port)
    authenticator = authenticator_for(settings.auth, engine)
    server = GrpcServer(host=network.bind_host, port=network.ingest_port,
                        authenticator=authenticator)
    servicer = IngestServicer(settings.limits, repository, bus, metrics, jobs=settings.jobs,
                              fetch=settings.fetch, authenticator=authenticator)
    server.add(ingest_pb2_grpc.add_IngestServiceServicer_to_server, servicer,
               ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name)
    await server.start()
    log.info("ingest listening on %s:%d", network.bind_host, server.port)
    try:
        await stop.wait()
    finally:
        await server.stop(settings.lifecycle.shutdown_grace_seconds,
                          drain_seconds=settings.lifecycle.grpc_drain_seconds)
        await bus.close()
        repository.close()
        await engine.dispose()


def main() -> None:
    settings = Settings()
    start_service_process(settings, "ingest")
    run_until_signalled(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    main()
