"""Fans status events out to the watchers of each request in this process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from pixpipe import tracing
from pixpipe.bus import COMPLETIONS_SUBJECT, Bus, events_subject
from pixpipe.v1 import status_pb2

log = logging.getLogger(__name__)

# How long a new subscription waits for the server's confirmation before watchers go on.
_SUBSCRIBE_CONFIRM_SECONDS = 2


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


class _Feed:
    """One request's live events: its NATS subscription and the queues of its watchers."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[LiveEvent]] = set()
        self.subscribed: asyncio.Task[Subscription | None] | None = None


class EventHub:
    """Fans a request's status events out to the watchers of it in this process.

    It subscribes to ``pixpipe.events.<request_id>`` while the request has a watcher here and
    to nothing else: a notifier then handles the events of watched requests only, not every
    event of every request (two per image, all day). Completions reach it separately, as a
    small notice on ``pixpipe.completions``, to start webhook deliveries at once.
    """

    def __init__(self, bus: Bus, *, queue_size: int = 10_000,
                 on_completion: Callable[[str], None] | None = None) -> None:
        self._bus = bus
        self._on_completion = on_completion
        self._queue_size = queue_size
        self._feeds: dict[str, _Feed] = {}
        self._completions: Subscription | None = None
        self._unsubscribing: set[asyncio.Task[None]] = set()
        # Diagnostics (tests, gauges): messages taken from NATS since start.
        self.events_received = 0
        self.completions_noticed = 0

    @property
    def watcher_count(self) -> int:
        return sum(len(feed.queues) for feed in self._feeds.values())

    @property
    def subscribed_requests(self) -> int:
        return len(self._feeds)

    async def start(self) -> None:
        self._completions = await self._bus.client.subscribe(
            COMPLETIONS_SUBJECT, cb=self._completion_noticed)

    async def stop(self) -> None:
        if self._completions is not None:
            await self._completions.unsubscribe()
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            self._close(feed)
        if self._unsubscribing:
            await asyncio.wait(self._unsubscribing)

    async def register(self, request_id: str) -> asyncio.Queue[LiveEvent]:
        """A queue of the request's live events, from a subscription the server already has
        when this returns (read the snapshot afterwards and nothing falls in between)."""
        queue: asyncio.Queue[LiveEvent] = asyncio.Queue(self._queue_size)
        feed = self._feeds.get(request_id)
        if feed is None:
            feed = self._feeds[request_id] = _Feed()
            feed.subscribed = asyncio.create_task(self._subscribe(request_id, feed))
        feed.queues.add(queue)
        assert feed.subscribed is not None
        try:
            # Shielded: a watcher that gives up must not cancel its fellows' subscription.
            await asyncio.shield(feed.subscribed)
        except BaseException:
            self.unregister(request_id, queue)
            raise
        return queue

    def unregister(self, request_id: str, queue: asyncio.Queue[LiveEvent]) -> None:
        feed = self._feeds.get(request_id)
        if feed is None:
            return
        feed.queues.discard(queue)
        if not feed.queues:
            del self._feeds[request_id]
            self._close(feed)

    async def _subscribe(self, request_id: str, feed: _Feed) -> Subscription | None:
        client = self._bus.client
        try:
            subscription = await client.subscribe(
                events_subject(request_id), cb=functools.partial(self._dispatch, feed))
        except Exception:
            # The client is closing: watchers still follow the request through resyncs.
            log.warning("could not subscribe to the events of %s", request_id, exc_info=True)
            return None
        try:
            await client.flush(timeout=_SUBSCRIBE_CONFIRM_SECONDS)
        except Exception:
            # Broker unreachable: the client re-subscribes when it reconnects, and watchers
            # resynchronise from the database meanwhile.
            log.info("subscription to %s not confirmed yet", request_id)
        return subscription

    def _close(self, feed: _Feed) -> None:
        task = asyncio.create_task(self._unsubscribe(feed))
        self._unsubscribing.add(task)
        task.add_done_callback(self._unsubscribing.discard)

    @staticmethod
    async def _unsubscribe(feed: _Feed) -> None:
        assert feed.subscribed is not None
        with contextlib.suppress(Exception):
            subscription = await feed.subscribed
            if subscription is not None:
                await subscription.unsubscribe()

    async def _completion_noticed(self, notice: Msg) -> None:
        self.completions_noticed += 1
        request_id = notice.data.decode(errors="replace")
        # In the trace of the job that finished the request, which the notice carries.
        with tracing.span("request completed", kind="consumer", headers=notice.headers,
                          attributes={"pixpipe.request_id": request_id}):
            if self._on_completion is not None:
                self._on_completion(request_id)

    async def _dispatch(self, feed: _Feed, message: Msg) -> None:
        self.events_received += 1
        if not feed.queues:
            return
        try:
            event = LiveEvent.decode(message.data)
        except Exception:
            log.warning("ignoring an undecodable event on %s", message.subject)
            return
        for queue in list(feed.queues):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # A stuck watcher loses live events but resynchronises from a snapshot.
                log.warning("watcher queue full on %s", message.subject)
