"""IngestService.Upload: CSV chunks in, a recorded request and one queued job per image out."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from pydantic import ValidationError

from pixpipe import tracing
from pixpipe.auth import Authenticator, Caller
from pixpipe.bus import Bus
from pixpipe.call_limits import CallSlots, abort_exhausted
from pixpipe.csv_input import CsvLimits, ParsedCsv, read_products_csv
from pixpipe.db.repository import Repository
from pixpipe.db.request_writes import RequestNotQueued
from pixpipe.domain import RequestOptions
from pixpipe.errors import CsvValidationError, InvalidOptionError
from pixpipe.grpc_errors import abort_with_status, status_for_csv_error, status_for_option_error
from pixpipe.job_batch import JobBatch
from pixpipe.metrics import IngestMetrics
from pixpipe.net_policy import check_webhook_url
from pixpipe.settings import FetchSettings, JobSettings, LimitSettings
from pixpipe.status_messages import options_from_proto
from pixpipe.v1 import ingest_pb2, ingest_pb2_grpc

if TYPE_CHECKING:
    from opentelemetry.context import Context

log = logging.getLogger(__name__)

UPLOAD_ACCEPTED = "File uploaded successfully"
_QUEUE_DOWN = "could not be queued: message broker unavailable"
_DATABASE_DOWN = "could not be recorded: database unavailable"
# Chunks received but not yet parsed, at most: a slow parse holds the upload back rather than
# buffer it (the gateway sends 256 KB chunks: about 4 MB).
_CHUNKS_AHEAD = 16
# An upload refused for want of a slot is told to come back after this long.
_UPLOAD_RETRY_SECONDS = 1
# An upload past its key's limit of requests under way: one of them may finish by then.
_KEY_REQUESTS_RETRY_SECONDS = 30


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, limits: LimitSettings, repository: Repository, bus: Bus,
                 metrics: IngestMetrics | None = None, *, jobs: JobSettings,
                 fetch: FetchSettings, authenticator: Authenticator | None = None) -> None:
        self._metrics = metrics or IngestMetrics()
        self._auth = authenticator or Authenticator.open()
        self._express_lane_max_images = jobs.express_lane_max_images
        # A webhook goes out under the same address policy as the image downloads.
        self._check_webhook_url = functools.partial(
            check_webhook_url, max_length=limits.max_url_length,
            allow_private=fetch.allow_private_networks)
        self._repository = repository
        self._bus = bus
        self._unfinished: set[asyncio.Future[tuple[str, JobBatch]]] = set()
        # An upload holds its slot from its first message until its request is recorded and
        # queued, even when its client has hung up by then.
        self._upload_slots = CallSlots(limits.ingest_max_concurrent_uploads)
        self._limits = CsvLimits(
            max_bytes=limits.max_upload_bytes, max_images=limits.max_images_per_request,
            max_url_length=limits.max_url_length, max_columns=limits.max_csv_columns,
            max_urls_per_product=limits.max_urls_per_product)

    @property
    def uploads_in_progress(self) -> int:
        return self._upload_slots.held()

    async def Upload(
        self,
        request_iterator: AsyncIterator[ingest_pb2.UploadRequest],
        context: grpc.aio.ServicerContext[ingest_pb2.UploadRequest, ingest_pb2.UploadResponse],
    ) -> ingest_pb2.UploadResponse:
        # The request's trace starts here, or goes on from a caller that sent its traceparent.
        with tracing.span("pixpipe.v1.IngestService/Upload", kind="server",
                          parent=_caller_trace(context)):
            return await self._upload_in_slot(request_iterator, context)

    async def _upload_in_slot(
        self,
        request_iterator: AsyncIterator[ingest_pb2.UploadRequest],
        context: grpc.aio.ServicerContext[ingest_pb2.UploadRequest, ingest_pb2.UploadResponse],
    ) -> ingest_pb2.UploadResponse:
        if not self._upload_slots.try_take():
            self._metrics.uploads.labels("busy").inc()
            await abort_exhausted(
                context, f"{self._upload_slots.limit} uploads are already in progress",
                _UPLOAD_RETRY_SECONDS)
        handed_over = False

        def hand_over(work: asyncio.Future[tuple[str, JobBatch]]) -> None:
            nonlocal handed_over
            handed_over = True
            work.add_done_callback(lambda _: self._upload_slots.release())

        try:
            return await self._upload(request_iterator, context, hand_over)
        finally:
            if not handed_over:
                self._upload_slots.release()

    async def _upload(
        self,
        request_iterator: AsyncIterator[ingest_pb2.UploadRequest],
        context: grpc.aio.ServicerContext[ingest_pb2.UploadRequest, ingest_pb2.UploadResponse],
        hand_over: Callable[[asyncio.Future[tuple[str, JobBatch]]], None],
    ) -> ingest_pb2.UploadResponse:
        """Receive, check, record and queue; ``hand_over`` gets the recording and queueing,
        which the upload's slot then waits for."""
        caller = await self._auth.caller(context)
        await self._check_key_limits(caller, 0, context)
        try:
            metadata, parsed = await self._receive(request_iterator)
            options = _options(metadata)
            webhook_url = _webhook_url(metadata, self._check_webhook_url)
        except CsvValidationError as error:
            self._metrics.uploads.labels("refused").inc()
            await abort_with_status(context, status_for_csv_error(error))
        except InvalidOptionError as error:
            self._metrics.uploads.labels("refused").inc()
            await abort_with_status(context, status_for_option_error(error))

        tracing.annotate({"pixpipe.image_count": parsed.image_count})
        await self._check_key_limits(caller, parsed.image_count, context)
        # Once the upload is in, a client that hangs up must not leave it half recorded or
        # half queued: the work goes on without it.
        work = asyncio.ensure_future(self._record_and_queue(
            parsed, options=options, webhook_url=webhook_url,
            file_name=metadata.file_name[:255], api_key_id=caller.key_id))
        self._unfinished.add(work)
        work.add_done_callback(self._unfinished.discard)
        hand_over(work)
        try:
            request_id, jobs = await asyncio.shield(work)
        except RequestNotQueued as error:
            message = ("the job queue is unavailable" if error.queueing_failed
                       else "the database is unavailable")
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"{message}; the request was not queued, try again")
        tracing.annotate({"pixpipe.request_id": request_id})
        self._metrics.uploads.labels("accepted").inc()
        self._metrics.images_queued.inc(len(jobs))
        log.info("accepted request %s: %d products, %d images", request_id,
                 len(parsed.rows), len(jobs))
        return ingest_pb2.UploadResponse(request_id=request_id, image_count=len(jobs),
                                         message=UPLOAD_ACCEPTED)

    async def _check_key_limits(self, caller: Caller, images: int,
                                context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """A key's own limits: requests under way at once, and images per rolling hour
        (``images`` more about to be added). Checked, not reserved: two uploads racing past
        the last free place may both pass."""
        key, keys = caller.key, self._auth.keys
        if key is None or keys is None or (key.max_concurrent_requests is None
                                           and key.max_images_per_hour is None):
            return
        usage = await keys.usage(key.id)
        if (key.max_concurrent_requests is not None and images == 0
                and usage.open_requests >= key.max_concurrent_requests):
            self._metrics.uploads.labels("over_key_limit").inc()
            await abort_exhausted(context, f"this API key already has "
                                  f"{usage.open_requests} requests under way (its limit is "
                                  f"{key.max_concurrent_requests})", _KEY_REQUESTS_RETRY_SECONDS)
        if (key.max_images_per_hour is not None
                and usage.images_last_hour + images > key.max_images_per_hour):
            self._metrics.uploads.labels("over_key_limit").inc()
            wait = _KEY_REQUESTS_RETRY_SECONDS
            if usage.hour_frees_at is not None:
                wait = max(1, math.ceil((usage.hour_frees_at - datetime.now(UTC))
                                        .total_seconds()))
            await abort_exhausted(context, f"this API key may send "
                                  f"{key.max_images_per_hour} images per hour; "
                                  f"{usage.images_last_hour} were sent in the last hour and "
                                  f"this upload has {images}", wait)

    async def _record_and_queue(self, parsed: ParsedCsv, *, options: RequestOptions,
                                webhook_url: str | None, file_name: str,
                                api_key_id: str | None = None) -> tuple[str, JobBatch]:
        """Record the request and queue its jobs, each part of the images queued once
        committed while the next is written; fail it if that stopped part way."""
        # Every job carries the upload's trace context, made into headers once for them all.
        publish = functools.partial(self._bus.publish_jobs, headers=tracing.trace_headers())
        try:
            return await self._repository.create_request(
                parsed, options=options, webhook_url=webhook_url, file_name=file_name,
                committed=publish, api_key_id=api_key_id,
                express=parsed.image_count <= self._express_lane_max_images)
        except RequestNotQueued as error:
            log.error("request %s was not wholly %s; failing its images", error.request_id,
                      "queued" if error.queueing_failed else "recorded", exc_info=error.__cause__)
            self._metrics.uploads.labels("unqueued").inc()
            await self._repository.fail_unqueued_request(
                error.request_id, _QUEUE_DOWN if error.queueing_failed else _DATABASE_DOWN)
            raise

    async def _receive(self, request_iterator: AsyncIterator[ingest_pb2.UploadRequest],
                       ) -> tuple[ingest_pb2.UploadMetadata, ParsedCsv]:
        """Parse the CSV in a thread as its chunks arrive; stop reading once it is refused."""
        metadata: ingest_pb2.UploadMetadata | None = None
        loop = asyncio.get_running_loop()
        chunks = _ChunkFeed(loop)
        parsing = _in_own_thread(loop, lambda: chunks.parse(self._limits))
        try:
            async for message in request_iterator:
                if parsing.done():
                    break  # refused before the end: the rest is not worth reading
                kind = message.WhichOneof("payload")
                if kind == "metadata":
                    if metadata is not None or chunks.started:
                        raise InvalidOptionError("metadata",
                                                 "must be sent once, before the first chunk")
                    metadata = message.metadata
                elif kind == "chunk" and message.chunk:
                    await chunks.put(message.chunk)
        except BaseException:
            chunks.close()
            with contextlib.suppress(Exception):
                await parsing  # the stream's own fault is the one to report
            raise
        chunks.close()
        return metadata or ingest_pb2.UploadMetadata(), await parsing


T = TypeVar("T")


def _in_own_thread(loop: asyncio.AbstractEventLoop, work: Callable[[], T]) -> asyncio.Future[T]:
    """Run ``work`` in a new daemon thread. Not the default executor: a parse waits for the
    client's chunks, and must never hold up the database writes that run there."""
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            outcome = functools.partial(_resolve, future, work())
        except BaseException as error:
            outcome = functools.partial(_fail, future, error)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(outcome)

    threading.Thread(target=run, name="csv-parse", daemon=True).start()
    return future


def _resolve(future: asyncio.Future[T], result: T) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[T], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class _ChunkFeed:
    """Chunks handed from the event loop to the parsing thread.

    At most _CHUNKS_AHEAD wait: when the parser falls behind, ``put`` waits (the event loop
    keeps serving) and flow control slows the client down. When the parser stops, early or
    not, the chunks still waiting are dropped, and so is anything put after that.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._chunks: deque[bytes] = deque()
        self._ready = threading.Condition()
        self._room = asyncio.Event()
        self._closed = False
        self._abandoned = False
        self.started = False

    async def put(self, chunk: bytes) -> None:
        self.started = True
        while len(self._chunks) >= _CHUNKS_AHEAD and not self._abandoned:
            self._room.clear()
            await self._room.wait()
        if self._abandoned:
            return
        with self._ready:
            self._chunks.append(chunk)
            self._ready.notify()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()

    def parse(self, limits: CsvLimits) -> ParsedCsv:
        """In the parsing thread: parse the chunks as they come."""
        try:
            return read_products_csv(self._take(), limits)
        finally:
            self._abandoned = True
            with self._ready:
                self._chunks.clear()
            self._wake_producer()

    def _take(self) -> Iterator[bytes]:
        while True:
            with self._ready:
                while not self._chunks and not self._closed:
                    self._ready.wait()
                if not self._chunks:
                    return
                chunk = self._chunks.popleft()
            self._wake_producer()
            yield chunk

    def _wake_producer(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._room.set)


def _caller_trace(context: grpc.aio.ServicerContext[Any, Any]) -> Context | None:
    if not tracing.enabled():
        return None
    return tracing.extract({key: value for key, value in context.invocation_metadata() or ()
                            if isinstance(value, str)})


def _options(metadata: ingest_pb2.UploadMetadata) -> RequestOptions:
    try:
        return options_from_proto(metadata.options)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "options"
        raise InvalidOptionError(field, first["msg"]) from None


def _webhook_url(metadata: ingest_pb2.UploadMetadata,
                 check: Callable[[str], object]) -> str | None:
    url = metadata.webhook_url.strip()
    if not url:
        return None
    try:
        check(url)
    except ValueError as error:
        raise InvalidOptionError("webhook_url", str(error)) from None
    return url
