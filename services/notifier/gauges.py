"""Keeps the notifier's gauges current: queue depth, webhook backlog, watchers."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from pixpipe.bus import EXPRESS_WORKERS_DURABLE, JOBS_STREAM, WORKERS_DURABLE, Bus
from pixpipe.db.webhooks import WebhookRepository
from pixpipe.metrics import NotifierMetrics
from pixpipe.runtime import sleep_unless_stopped
from pixpipe_services.notifier.hub import EventHub

log = logging.getLogger(__name__)


async def refresh_gauges(metrics: NotifierMetrics, bus: Bus, webhooks: WebhookRepository,
                         hub: EventHub) -> None:
    metrics.watchers.set(hub.watcher_count)
    metrics.webhook_backlog.set(await webhooks.backlog())
    with contextlib.suppress(Exception):  # no consumer yet: no worker has started
        lanes = [await bus.js.consumer_info(JOBS_STREAM, durable)
                 for durable in (WORKERS_DURABLE, EXPRESS_WORKERS_DURABLE)]
        metrics.queue_depth.set(sum(info.num_pending or 0 for info in lanes))
        metrics.jobs_unacknowledged.set(sum(info.num_ack_pending or 0 for info in lanes))


async def keep_gauges_current(metrics: NotifierMetrics, bus: Bus, webhooks: WebhookRepository,
                              hub: EventHub, stop: asyncio.Event, *,
                              interval: float = 5.0) -> None:
    while not stop.is_set():
        try:
            await refresh_gauges(metrics, bus, webhooks, hub)
        except Exception:
            log.debug("refreshing gauges failed", exc_info=True)
        await sleep_unless_stopped(stop, interval)
