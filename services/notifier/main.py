"""Entry point of the notifier (``pixpipe-notifier``): status gRPC service and webhooks."""

from __future__ import annotations

import asyncio
import logging

from pixpipe.bus import Bus
from pixpipe.db.engine import engine_from_settings, session_factory
from pixpipe.db.repository import Repository
from pixpipe.db.webhooks import WebhookRepository
from pixpipe.grpc_server import GrpcServer
from pixpipe.runtime import configure_logging, run_until_signalled
from pixpipe.settings import Settings
from pixpipe.v1 import status_pb2, status_pb2_grpc
from services.notifier.hub import EventHub
from services.notifier.servicer import StatusServicer
from services.notifier.webhooks import WebhookDispatcher, WebhookSender

log = logging.getLogger(__name__)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    engine = engine_from_settings(settings)
    repository = Repository(session_factory(engine))
    bus = await Bus.connect(settings, name="pixpipe-notifier")
    sender = WebhookSender(settings)
    dispatcher = WebhookDispatcher(settings, repository,
                                   WebhookRepository(session_factory(engine)), sender)
    hub = EventHub(bus, on_completion=dispatcher.wake)
    await hub.start()
    deliveries = asyncio.create_task(dispatcher.run(stop))
    server = GrpcServer(host=settings.bind_host, port=settings.status_port,
                        api_token=settings.api_token)
    server.add(status_pb2_grpc.add_StatusServiceServicer_to_server,
               StatusServicer(repository, hub),
               status_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name)
    await server.start()
    log.info("status service listening on %s:%d", settings.bind_host, server.port)
    try:
        await stop.wait()
    finally:
        await server.stop()
        await deliveries
        await sender.aclose()
        await hub.stop()
        await bus.close()
        await engine.dispose()


def main() -> None:
    settings = Settings()
    configure_logging(settings, "notifier")
    run_until_signalled(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    main()
