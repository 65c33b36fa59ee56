"""Fans status events from one NATS subscription out to every local watcher."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from pixpipe.bus import EVENTS_SUBJECT_PREFIX, Bus
from pixpipe.v1 import status_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One published event, decoded and encoded once for every watcher of its request."""

    message: status_pb2.WatchStatusResponse
    # The event as published: a serialised WatchStatusResponse, sent to watchers as it is.
    wire: bytes
    # The same event as a one-element ``batch``; protobuf merges concatenated messages, so
    # joining several of these is a valid ``batch`` of all of them.
    batch_wire: bytes

    @classmethod
    def decode(cls, data: bytes) -> LiveEvent:
        message = status_pb2.WatchStatusResponse.FromString(data)
        batch = status_pb2.WatchStatusResponse(batch=status_pb2.EventBatch(events=[message]))
        return cls(message=message, wire=data, batch_wire=batch.SerializeToString())

    @property
    def version(self) -> int:
        return self.message.version

    @property
    def is_completion(self) -> bool:
        return self.message.WhichOneof("event") == "completed"


class EventHub:
    """One subscription for the whole process; a bounded queue per watcher."""

    def __init__(self, bus: Bus, *, queue_size: int = 10_000,
                 on_completion: Callable[[], None] | None = None) -> None:
        self._bus = bus
        self._on_completion = on_completion
        self._queue_size = queue_size
        self._watchers: dict[str, set[asyncio.Queue[LiveEvent]]] = (
            defaultdict(set))
        self._subscription: Subscription | None = None

    @property
    def watcher_count(self) -> int:
        return sum(len(queues) for queues in self._watchers.values())

    async def start(self) -> None:
        self._subscription = await self._bus.client.subscribe(
            f"{EVENTS_SUBJECT_PREFIX}.*", cb=self._dispatch)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()

    def register(self, request_id: str) -> asyncio.Queue[LiveEvent]:
        queue: asyncio.Queue[LiveEvent] = asyncio.Queue(self._queue_size)
        self._watchers[request_id].add(queue)
        return queue

    def unregister(self, request_id: str,
                   queue: asyncio.Queue[LiveEvent]) -> None:
        queues = self._watchers.get(request_id)
        if queues is None:
            return
        queues.discard(queue)
        if not queues:
            del self._watchers[request_id]

    async def _dispatch(self, message: Msg) -> None:
        request_id = message.subject.rsplit(".", 1)[-1]
        if self._on_completion is not None and (message.headers or {}).get(
                "Nats-Msg-Id", "").endswith(".completed"):
            self._on_completion()
        queues = self._watchers.get(request_id)
        if not queues:
            return
        try:
            event = LiveEvent.decode(message.data)
        except Exception:
            log.warning("ignoring an undecodable event on %s", message.subject)
            return
        for queue in list(queues):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # A stuck watcher loses live events but resynchronises from a snapshot.
                log.warning("watcher queue full for request %s", request_id)
