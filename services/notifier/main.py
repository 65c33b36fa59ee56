"""Entry point of the notifier (``pixpipe-notifier``): status gRPC service and webhooks."""

from __future__ import annotations

import asyncio
import logging
import sys

from pixpipe.auth import authenticator_for
from pixpipe.bus import Bus
from pixpipe.database_health import report_database_health
from pixpipe.db.api_keys import ApiKeyStore
from pixpipe.db.engine import engine_from_settings, session_factory
from pixpipe.db.repository import Repository
from pixpipe.db.webhooks import WebhookRepository
from pixpipe.events import EventPublisher, republish_completions
from pixpipe.grpc_server import GrpcServer
from pixpipe.metrics import NotifierMetrics, serve_metrics
from pixpipe.retention import keep_purging
from pixpipe.runtime import run_until_signalled, start_service_process
from pixpipe.settings import Settings
from pixpipe.v1 import status_pb2
from pixpipe_services.notifier.gauges import keep_gauges_current
from pixpipe_services.notifier.hub import EventHub
from pixpipe_services.notifier.lost_jobs import job_lifetime, keep_sweeping_lost_jobs
from pixpipe_services.notifier.servicer import StatusServicer, WatchCaps, add_status_service
from pixpipe_services.notifier.webhooks import WebhookDispatcher, WebhookSender

log = logging.getLogger(__name__)


class MissingWebhookSecret(Exception):
    """The notifier signs every webhook; without a secret of its own it must not start."""


class Notifier:
    """The status service, the event hub behind its watchers and the webhook dispatcher."""

    def __init__(self, settings: Settings) -> None:
        if not settings.webhooks.secret:
            raise MissingWebhookSecret(
                "PIXPIPE_WEBHOOK_SECRET is not set: the notifier signs every webhook with it. "
                "Set it to a secret of your own (whsec_ and base64 of 32 random bytes, e.g. "
                "python -c 'from pixpipe.dev.webhook_secret import new_webhook_secret; "
                "print(new_webhook_secret())'); `make run` generates one per install.")
        self.settings = settings
        self._engine = engine_from_settings(settings.storage)
        sessions = session_factory(self._engine)
        self.repository = Repository(sessions)
        self.webhooks = WebhookRepository(sessions)
        self._sender = WebhookSender(settings.webhooks, settings.fetch)
        self.metrics = NotifierMetrics()
        self.dispatcher = WebhookDispatcher(
            settings.webhooks, self.repository, self.webhooks, self._sender, self.metrics,
            public_base_url=settings.network.public_base_url,
            keys=ApiKeyStore(self._engine) if settings.auth.api_keys else None)
        self._gauges: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._lost_jobs: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._database_health: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._deliveries: asyncio.Task[None] | None = None
        self.hub: EventHub | None = None
        self.status: StatusServicer | None = None
        self.server: GrpcServer | None = None
        self._bus: Bus | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    async def start(self) -> None:
        settings = self.settings
        self._bus = await Bus.connect(settings.nats, name="pixpipe-notifier")
        self.hub = EventHub(self._bus, on_completion=self.dispatcher.wake)
        await self.hub.start()
        self._deliveries = asyncio.create_task(self.dispatcher.run(self._stop))
        self._gauges = asyncio.create_task(keep_gauges_current(
            self.metrics, self._bus, self.webhooks, self.hub, self._stop))
        network = settings.network
        publisher = EventPublisher(self._bus, self.repository,
                                   public_base_url=network.public_base_url)
        self._sweeper = asyncio.create_task(republish_completions(
            publisher, self.repository, self._stop))
        lifetime = job_lifetime(settings.jobs,
                                fetch_timeout_seconds=settings.fetch.timeout_seconds)
        self._lost_jobs = asyncio.create_task(keep_sweeping_lost_jobs(
            self._bus, self.repository, publisher, lifetime, self._stop))
        if settings.storage.retention_days is not None:
            self._retention = asyncio.create_task(
                keep_purging(settings.storage, self._engine, self._stop))
        serve_metrics(self.metrics.registry, network.bind_host,
                      settings.observability.metrics_port)
        authenticator = authenticator_for(settings.auth, self._engine)
        self.server = GrpcServer(host=network.bind_host, port=network.status_port,
                                 authenticator=authenticator)
        self.status = StatusServicer(self.repository, self.hub,
                                     public_base_url=network.public_base_url,
                                     authenticator=authenticator,
                                     resync_seconds=settings.watch.resync_seconds,
                                     watch_caps=WatchCaps.from_settings(settings.watch,
                                                                        settings.auth))
        self.server.add(add_status_service, self.status,
                        status_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name)
        await self.server.start()
        self._database_health = asyncio.create_task(report_database_health(
            self.server.health, self._engine, self._stop))
        log.info("status service listening on %s:%d", network.bind_host, self.server.port)

    async def stop(self, grace: float = 5.0) -> None:
        self._stop.set()
        if self.server is not None:
            await self.server.stop(
                grace, drain_seconds=self.settings.lifecycle.grpc_drain_seconds)
        if self._deliveries is not None:
            await self._deliveries
        if self._gauges is not None:
            await self._gauges
        if self._sweeper is not None:
            await self._sweeper
        if self._lost_jobs is not None:
            await self._lost_jobs
        if self._retention is not None:
            await self._retention
        if self._database_health is not None:
            await self._database_health
        await self._sender.aclose()
        if self.hub is not None:
            await self.hub.stop()
        if self._bus is not None:
            await self._bus.close()
        self.repository.close()
        await self._engine.dispose()


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    notifier = Notifier(settings)
    await notifier.start()
    try:
        await stop.wait()
    finally:
        await notifier.stop(settings.lifecycle.shutdown_grace_seconds)


def main() -> None:
    settings = Settings()
    start_service_process(settings, "notifier")
    if not settings.webhooks.secret:
        print(f"pixpipe notifier cannot start: {MissingWebhookSecret.__doc__} "
              "Set PIXPIPE_WEBHOOK_SECRET (`make run` generates one per install).",
              file=sys.stderr)
        raise SystemExit(2)
    run_until_signalled(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    main()
