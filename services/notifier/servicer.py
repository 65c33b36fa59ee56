"""StatusService: GetStatus from the database, WatchStatus as snapshot + live events."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import grpc

from pixpipe.auth import Authenticator
from pixpipe.call_limits import CallSlots, abort_exhausted, client_of
from pixpipe.db.repository import Repository
from pixpipe.domain import TERMINAL_REQUEST_STATES, ImageState, RequestView
from pixpipe.output_csv import output_csv_chunks
from pixpipe.paging import (
    ImagePageQuery,
    InvalidPageToken,
    decode_page_token,
    encode_page_token,
    page_size,
)
from pixpipe.settings import AuthSettings, WatchSettings
from pixpipe.status_messages import (
    IMAGE_STATES_FROM_PROTO,
    completion_event,
    image_to_proto,
    request_to_proto,
)
from pixpipe.v1 import status_pb2, status_pb2_grpc
from pixpipe_services.notifier.hub import EventHub, LiveEvent
from pixpipe_services.notifier.snapshots import Snapshot, SnapshotLoader

StatusContext = grpc.aio.ServicerContext[object, object]
# What WatchStatus yields: a message, or an event already serialised (see add_status_service).
WatchMessage = status_pb2.WatchStatusResponse | bytes
# Events packed into one batch at most; a few hundred bytes each, far below gRPC's 4 MB.
MAX_BATCH_EVENTS = 500
# A watch refused for want of a slot is told to come back after this long.
WATCH_RETRY_SECONDS = 5


@dataclass(frozen=True)
class WatchCaps:
    """WatchStatus streams served at once, per request and per client: the token it calls
    with whenever calls need one, else its address (see client_of)."""

    per_request: int = 1000
    per_client: int = 1000
    clients_by_token: bool = False

    @classmethod
    def from_settings(cls, watch: WatchSettings, auth: AuthSettings) -> WatchCaps:
        return cls(per_request=watch.max_per_request, per_client=watch.max_per_client,
                   clients_by_token=bool(auth.api_token or auth.api_keys))


def is_valid_request_id(request_id: str) -> bool:
    try:
        return str(uuid.UUID(request_id)) == request_id.lower()
    except ValueError:
        return False


class StatusServicer(status_pb2_grpc.StatusServiceServicer):
    def __init__(self, repository: Repository, hub: EventHub, *, public_base_url: str,
                 resync_seconds: float = 2.0, reorder_seconds: float = 0.5,
                 watch_caps: WatchCaps | None = None,
                 authenticator: Authenticator | None = None) -> None:
        self._auth = authenticator or Authenticator.open()
        self._reorder_seconds = reorder_seconds
        self._repository = repository
        self._public_base_url = public_base_url
        self._hub = hub
        self._resync_seconds = resync_seconds
        self._watch_caps = watch_caps or WatchCaps()
        self._watchers_per_request = CallSlots(self._watch_caps.per_request)
        self._watchers_per_client = CallSlots(self._watch_caps.per_client)
        self.snapshots = SnapshotLoader(repository, public_base_url=public_base_url)

    @staticmethod
    async def _check_id(request_id: str, context: StatusContext) -> None:
        if not is_valid_request_id(request_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"request_id must be a UUID, got {request_id[:64]!r}")

    async def _check_owner(self, request_id: str, context: StatusContext) -> None:
        """With API keys, another key's request does not exist for the caller."""
        if self._auth.keys is None:
            return
        caller = await self._auth.caller(context)
        if not await self._repository.belongs_to(request_id.lower(), caller.key_id):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no request {request_id}")

    async def _load(self, request_id: str, context: StatusContext, *,
                    images: ImagePageQuery | None = None) -> RequestView:
        await self._check_id(request_id, context)
        await self._check_owner(request_id, context)
        view = await self._repository.get_request(request_id.lower(), images=images)
        if view is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no request {request_id}")
        assert view is not None
        return view

    @staticmethod
    async def _page_query(request_id: str, size: int, token: str,
                          state: status_pb2.ImageState.ValueType,
                          context: StatusContext) -> ImagePageQuery:
        """The page a GetStatus or ListImages call asks for; INVALID_ARGUMENT for a token
        that is malformed or belongs to another request or filter."""
        image_state: ImageState | None = IMAGE_STATES_FROM_PROTO.get(state)
        try:
            after = decode_page_token(token, request_id=request_id.lower(),
                                      state=image_state) if token else None
        except InvalidPageToken as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return ImagePageQuery(size=page_size(size), state=image_state, after=after)

    async def GetStatus(
        self, request: status_pb2.GetStatusRequest, context: StatusContext,
    ) -> status_pb2.GetStatusResponse:
        await self._check_id(request.request_id, context)
        query = None if request.summary_only else await self._page_query(
            request.request_id, request.page_size, request.page_token, request.status_filter,
            context)
        view = await self._load(request.request_id, context, images=query)
        return status_pb2.GetStatusResponse(status=request_to_proto(view, self._public_base_url))

    async def ListImages(
        self, request: status_pb2.ListImagesRequest, context: StatusContext,
    ) -> status_pb2.ListImagesResponse:
        await self._check_id(request.request_id, context)
        request_id = request.request_id.lower()
        await self._check_owner(request_id, context)
        query = await self._page_query(request_id, request.page_size, request.page_token,
                                       request.status_filter, context)
        page = await self._repository.list_images(request_id, query)
        if page is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no request {request.request_id}")
        assert page is not None
        response = status_pb2.ListImagesResponse(
            images=[image_to_proto(image, self._public_base_url) for image in page.images])
        if page.next_after is not None:
            response.next_page_token = encode_page_token(request_id, query.state,
                                                         page.next_after)
        return response

    async def ListRequests(
        self, request: status_pb2.ListRequestsRequest, context: StatusContext,
    ) -> status_pb2.ListRequestsResponse:
        limit = min(request.limit or 20, 100)
        if self._auth.keys is None:
            views = await self._repository.list_requests(limit=limit)
        else:
            caller = await self._auth.caller(context)
            views = await self._repository.list_requests(limit=limit, of_key=True,
                                                         api_key_id=caller.key_id)
        return status_pb2.ListRequestsResponse(
            requests=[request_to_proto(view, self._public_base_url) for view in views])

    async def ExportCsv(
        self, request: status_pb2.ExportCsvRequest, context: StatusContext,
    ) -> AsyncIterator[status_pb2.ExportCsvResponse]:
        view = await self._load(request.request_id, context)
        if view.counters.status not in TERMINAL_REQUEST_STATES:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"request {view.request_id} is still {view.counters.status}; "
                                "its output CSV is ready when it finishes")
        rows = self._repository.output_rows(view.request_id)
        async for chunk in output_csv_chunks(view.header, rows,
                                             request.base_url or self._public_base_url):
            yield status_pb2.ExportCsvResponse(chunk=chunk)

    async def WatchStatus(  # type: ignore[override]  # may yield serialised events
        self, request: status_pb2.WatchStatusRequest, context: StatusContext,
    ) -> AsyncIterator[WatchMessage]:
        request_id = request.request_id.lower()
        await self._check_id(request_id, context)
        await self._check_owner(request_id, context)
        client = client_of(context, by_token=self._watch_caps.clients_by_token)
        await self._take_watch_slots(request_id, client, context)
        try:
            # Register before reading the snapshot so nothing committed in between is missed.
            queue = await self._hub.register(request_id)
            try:
                snapshot = await self.snapshots.load(request_id)
                if snapshot is None:
                    await context.abort(grpc.StatusCode.NOT_FOUND, f"no request {request_id}")
                assert snapshot is not None
                async for event in self._events(snapshot, queue, request.after_version,
                                                allow_batches=request.allow_batches):
                    yield event
            finally:
                self._hub.unregister(request_id, queue)
        finally:
            # The stream ended, failed, or its client went away (grpc cancels the generator).
            self._watchers_per_request.release(request_id)
            self._watchers_per_client.release(client)

    async def _take_watch_slots(self, request_id: str, client: str,
                                context: StatusContext) -> None:
        """Both slots or neither; RESOURCE_EXHAUSTED when either cap is reached."""
        if not self._watchers_per_request.try_take(request_id):
            await abort_exhausted(
                context, f"request {request_id} already has {self._watch_caps.per_request} "
                "watchers", WATCH_RETRY_SECONDS)
        if not self._watchers_per_client.try_take(client):
            self._watchers_per_request.release(request_id)
            await abort_exhausted(
                context, f"this client already has {self._watch_caps.per_client} watch "
                "streams open", WATCH_RETRY_SECONDS)

    async def _events(
        self, snapshot: Snapshot, queue: asyncio.Queue[LiveEvent], after_version: int, *,
        allow_batches: bool,
    ) -> AsyncIterator[WatchMessage]:
        """Snapshot, live events in version order, completion; snapshots and live events go
        out serialised once for all watchers (bytes)."""
        view = snapshot.view
        request_id = view.request_id
        seen = view.counters.version
        if after_version < seen:
            yield snapshot.wire
        if view.counters.status in TERMINAL_REQUEST_STATES:
            yield completion_event(view, self._public_base_url)
            return
        # Two workers can publish versions out of order; hold a later one briefly for the one
        # before it, and fall back to the database only when the gap does not fill.
        held: dict[int, LiveEvent] = {}
        while True:
            wait = self._reorder_seconds if held else self._resync_seconds
            # asyncio.timeout rather than wait_for: no extra task per event per watcher.
            first = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    first = await queue.get()
            if first is not None:
                # Whatever else arrived meanwhile goes out with it when the watcher allows.
                arrived = [first, *_queued(queue)] if allow_batches else [first]
                completion = next((event for event in arrived if event.is_completion), None)
                for event in arrived:
                    if not event.is_completion and event.version > seen:
                        held[event.version] = event
                seen, ready = _in_order(seen, held)
                for message in _wire_messages(ready, allow_batches):
                    yield message
                if completion is not None:
                    yield await self._full_completion(request_id, completion.message)
                    return
                continue
            # A gap that did not fill (an event was lost) or a quiet spell: check the
            # database, which is the source of truth; a counters-only read usually settles it.
            summary = await self._repository.get_request(request_id, images=None)
            if summary is None:
                return
            if (summary.counters.version <= seen
                    and summary.counters.status not in TERMINAL_REQUEST_STATES):
                continue
            latest = await self.snapshots.load(request_id)
            if latest is None:
                return
            fresh = latest.view
            if fresh.counters.version > seen:
                seen = fresh.counters.version
                yield latest.wire
            held = {version: e for version, e in held.items() if version > seen}
            seen, ready = _in_order(seen, held)
            for message in _wire_messages(ready, allow_batches):
                yield message
            if fresh.counters.status in TERMINAL_REQUEST_STATES:
                yield completion_event(fresh, self._public_base_url)
                return

    async def _full_completion(self, request_id: str,
                               event: status_pb2.WatchStatusResponse,
                               ) -> status_pb2.WatchStatusResponse:
        # Large first pages leave the completion event without images; fill them in.
        if event.completed.images or event.completed.total == 0:
            return event
        latest = await self.snapshots.load(request_id)
        return completion_event(latest.view, self._public_base_url) if latest is not None else event


def _queued(queue: asyncio.Queue[LiveEvent]) -> list[LiveEvent]:
    """The events already waiting in ``queue``, without waiting for more."""
    events: list[LiveEvent] = []
    while len(events) < MAX_BATCH_EVENTS - 1:
        try:
            events.append(queue.get_nowait())
        except asyncio.QueueEmpty:
            break
    return events


def _in_order(seen: int, held: dict[int, LiveEvent]) -> tuple[int, list[LiveEvent]]:
    """Take the held events that continue ``seen`` without a gap."""
    ready: list[LiveEvent] = []
    while seen + 1 in held:
        seen += 1
        ready.append(held.pop(seen))
    return seen, ready


def _wire_messages(events: list[LiveEvent], allow_batches: bool) -> list[bytes]:
    if len(events) > 1 and allow_batches:
        return [b"".join(event.batch_wire for event in events)]
    return [event.wire for event in events]


def _serialise(message: WatchMessage) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


class _HandlerCollector:
    """Stands in for a server to capture the generated code's method handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, _handlers: object) -> None:
        pass

    def add_registered_method_handlers(
            self, _service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
        self.handlers = dict(handlers)


def add_status_service(servicer: StatusServicer, server: grpc.aio.Server) -> None:
    """The generated registration, except that WatchStatus may yield serialised events."""
    collector = _HandlerCollector()
    status_pb2_grpc.add_StatusServiceServicer_to_server(
        servicer, cast(grpc.aio.Server, collector))
    collector.handlers["WatchStatus"] = grpc.unary_stream_rpc_method_handler(
        servicer.WatchStatus,
        request_deserializer=status_pb2.WatchStatusRequest.FromString,
        response_serializer=_serialise)
    service = status_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, collector.handlers),))
    # Registered handlers are matched before generic ones (the generated code adds both).
    server.add_registered_method_handlers(  # type: ignore[attr-defined]  # missing in stubs
        service, collector.handlers)
