"""Publishes status events to PIXPIPE_EVENTS after the database commit that caused them."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from pixpipe.bus import Bus
from pixpipe.db.repository import Repository
from pixpipe.domain import ImageChange
from pixpipe.retry import doubling_delay
from pixpipe.runtime import sleep_unless_stopped
from pixpipe.status_messages import completion_event, image_event
from pixpipe.tracing import trace_headers

log = logging.getLogger(__name__)

# The completion event carries the first page of images; past this size (long URLs and
# names) it leaves them out (NATS caps a message at 1 MB) and watchers read them instead.
_MAX_COMPLETION_PAYLOAD = 512 * 1024


def completion_message_id(request_id: str) -> str:
    return f"{request_id}.completed"


class EventPublisher:
    def __init__(self, bus: Bus, repository: Repository, *, public_base_url: str) -> None:
        self._bus = bus
        self._repository = repository
        self._public_base_url = public_base_url

    async def image_changed(self, change: ImageChange) -> None:
        """Publish the change, and the completion when this commit finished the request.

        The database already holds the truth, so a failed publish is logged, not raised:
        watchers resynchronise from a snapshot and webhooks are driven from the database.
        """
        try:
            await self._bus.publish_event(
                change.request_id, image_event(change, self._public_base_url).SerializeToString(),
                message_id=f"{change.request_id}.v{change.counters.version}", confirm=False)
        except Exception:
            log.warning("could not publish event for request %s", change.request_id,
                        exc_info=True)
        if change.finished_request:
            await self.publish_completion(change.request_id)

    async def publish_completion(self, request_id: str, *, attempts: int = 5) -> bool:
        """Publish the completion until JetStream confirms it, then record that.

        Retrying is safe: the message id lets the stream keep exactly one. When every
        attempt fails, the notifier's sweeper publishes it later (``unpublished_completions``).
        """
        for attempt in range(attempts):
            try:
                await self.request_finished(request_id)
                await self._repository.mark_completion_published(request_id)
                return True
            except Exception:
                log.warning("publishing the completion of %s failed (attempt %d)",
                            request_id, attempt + 1, exc_info=True)
                await asyncio.sleep(doubling_delay(attempt + 1, first=0.5, cap=5.0))
        return False

    async def request_finished(self, request_id: str) -> None:
        view = await self._repository.get_request(request_id)
        if view is None:
            return
        payload = completion_event(view, self._public_base_url).SerializeToString()
        if len(payload) > _MAX_COMPLETION_PAYLOAD:
            summary = await self._repository.get_request(request_id, images=None)
            assert summary is not None
            payload = completion_event(summary, self._public_base_url).SerializeToString()
        # The trace of the job that finished the request goes on to the notifiers.
        trace = trace_headers()
        await self._bus.publish_event(request_id, payload,
                                      message_id=completion_message_id(request_id),
                                      headers=trace)
        await self._bus.announce_completion(request_id, headers=trace)


async def republish_completions(publisher: EventPublisher, repository: Repository,
                                stop: asyncio.Event, *, grace_seconds: float = 10.0,
                                interval: float = 5.0) -> None:
    """Publish completions whose worker died (or gave up) between commit and publish."""
    while not stop.is_set():
        try:
            finished_before = datetime.now(UTC) - timedelta(seconds=grace_seconds)
            for request_id in await repository.unpublished_completions(
                    finished_before=finished_before):
                await publisher.publish_completion(request_id, attempts=1)
        except Exception:
            log.warning("sweeping unpublished completions failed", exc_info=True)
        await sleep_unless_stopped(stop, interval)
