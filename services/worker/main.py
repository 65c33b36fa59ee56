"""Entry point of a worker process (``pixpipe-worker``); run as many as you like."""

from __future__ import annotations

import asyncio
import logging

from pixpipe.bus import Bus
from pixpipe.db.engine import engine_from_settings, session_factory
from pixpipe.db.repository import Repository
from pixpipe.db.reuse import ReuseIndex
from pixpipe.events import EventPublisher
from pixpipe.fetcher import SafeFetcher
from pixpipe.metrics import WorkerMetrics, serve_metrics
from pixpipe.object_storage import StorageMisconfigured
from pixpipe.runtime import run_until_signalled, start_service_process
from pixpipe.settings import Settings, codec_processes_per_worker
from pixpipe.storage import s3_store_from_settings, store_from_settings
from pixpipe_services.worker.consumer import JobConsumer
from pixpipe_services.worker.processor import CodecPool, ImageProcessor
from pixpipe_services.worker.reuse import OutputReuse

log = logging.getLogger(__name__)


async def work(settings: Settings, stop: asyncio.Event) -> None:
    s3_store = s3_store_from_settings(settings.storage)
    if s3_store is not None:
        # Wrong credentials or a missing bucket stop the worker here, not each image later.
        await asyncio.to_thread(s3_store.check)
    engine = engine_from_settings(settings.storage)
    repository = Repository(session_factory(engine))
    bus = await Bus.connect(settings.nats, name="pixpipe-worker")
    # Alone on its machine unless told otherwise (make run tells it its share of the cores).
    codec = CodecPool.from_settings(
        settings.codec, codec_processes_per_worker(settings.codec, workers_on_this_machine=1))
    fetcher = SafeFetcher(settings.fetch)
    store = store_from_settings(settings.storage)
    reuse = (OutputReuse(ReuseIndex(engine, repository.writes), store, nats=bus.client)
             if settings.storage.reuse_outputs else None)
    processor = ImageProcessor(settings.encoding, fetcher, codec, store, reuse)
    metrics = WorkerMetrics()
    serve_metrics(metrics.registry, settings.network.bind_host,
                  settings.observability.metrics_port)
    events = EventPublisher(bus, repository, public_base_url=settings.network.public_base_url)
    consumer = JobConsumer(settings.jobs, bus, repository, processor, events, metrics,
                           shutdown_grace_seconds=settings.lifecycle.shutdown_grace_seconds)
    log.info("worker started: %d jobs at once", settings.jobs.worker_concurrency)
    try:
        if reuse is not None:
            await reuse.start()
        await consumer.run(stop)
    finally:
        if reuse is not None:
            await reuse.aclose()
        await fetcher.aclose()
        await codec.aclose()
        await bus.close()
        repository.close()
        await engine.dispose()
    log.info("worker stopped")


def main() -> None:
    settings = Settings()
    start_service_process(settings, "worker")
    try:
        run_until_signalled(lambda stop: work(settings, stop))
    except StorageMisconfigured as error:
        log.error("cannot start: object storage %s", error)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
