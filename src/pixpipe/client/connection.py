"""A small async client for pixpipe's gRPC services, with a watcher that resumes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc

from pixpipe.client.uploads import file_chunks, upload_requests
from pixpipe.domain import ImageState
from pixpipe.paging import MAX_PAGE_SIZE
from pixpipe.retry import doubling_delay
from pixpipe.status_messages import IMAGE_STATES_TO_PROTO
from pixpipe.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    options_pb2,
    status_pb2,
    status_pb2_grpc,
)

# Watching survives a restarting notifier: these codes mean "try again shortly".
RETRYABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN,
                   grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED)


@dataclass(frozen=True)
class ServerAddresses:
    ingest: str = "127.0.0.1:50051"
    status: str = "127.0.0.1:50052"


class PixpipeClient:
    """Channels to the ingest and status services; use ``async with``."""

    def __init__(self, addresses: ServerAddresses, *, api_token: str | None = None) -> None:
        self._ingest_channel = grpc.aio.insecure_channel(addresses.ingest)
        self._status_channel = grpc.aio.insecure_channel(addresses.status)
        self.ingest = ingest_pb2_grpc.IngestServiceStub(self._ingest_channel)
        self.status = status_pb2_grpc.StatusServiceStub(self._status_channel)
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {api_token}"),) if api_token else ())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._ingest_channel.close(grace=None)
        await self._status_channel.close(grace=None)

    async def upload(self, path: Path, *, webhook_url: str = "",
                     options: options_pb2.ProcessingOptions | None = None,
                     rpc_timeout: float = 300.0) -> ingest_pb2.UploadResponse:
        metadata = ingest_pb2.UploadMetadata(file_name=path.name, webhook_url=webhook_url,
                                             options=options)
        response: ingest_pb2.UploadResponse = await self.ingest.Upload(
            upload_requests(metadata, file_chunks(path)), metadata=self.metadata,
            timeout=rpc_timeout)
        return response

    async def get_status(self, request_id: str, *, summary_only: bool = False,
                         page_size: int = 0, page_token: str = "",
                         status: ImageState | str | None = None,
                         rpc_timeout: float = 30.0) -> status_pb2.RequestStatus:
        """The summary and one page of images (``page_size`` 0: the server's 1000), only
        those in ``status`` when given; ``next_page_token`` of the answer continues it."""
        response: status_pb2.GetStatusResponse = await self.status.GetStatus(
            status_pb2.GetStatusRequest(
                request_id=request_id, summary_only=summary_only, page_size=page_size,
                page_token=page_token, status_filter=image_state_filter(status)),
            metadata=self.metadata, timeout=rpc_timeout)
        return response.status

    async def list_images(self, request_id: str, *, status: ImageState | str | None = None,
                          page_size: int = MAX_PAGE_SIZE, page_token: str = "",
                          max_retries: int = 5, retry_delay: float = 0.5,
                          ) -> AsyncGenerator[status_pb2.ImageStatus, None]:
        """Every image of the request (or those in ``status``), page after page, each once,
        ordered by serial number then position in the cell; ``page_token`` starts later.

        A page whose call fails on the way is asked for again with the same token, so a
        restarting status service neither repeats nor skips images.
        """
        request = status_pb2.ListImagesRequest(
            request_id=request_id, page_size=page_size, page_token=page_token,
            status_filter=image_state_filter(status))
        failures = 0
        while True:
            try:
                response: status_pb2.ListImagesResponse = await self.status.ListImages(
                    request, metadata=self.metadata, timeout=30.0)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or failures >= max_retries:
                    raise
                failures += 1
                await asyncio.sleep(doubling_delay(failures, first=retry_delay, cap=5.0))
                continue
            failures = 0
            for image in response.images:
                yield image
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    async def export_csv(self, request_id: str, *, base_url: str = "") -> AsyncIterator[bytes]:
        """The output CSV in chunks of about 256 KB as the server streams them."""
        call = self.status.ExportCsv(
            status_pb2.ExportCsvRequest(request_id=request_id, base_url=base_url),
            metadata=self.metadata, timeout=300)
        while isinstance(message := await call.read(), status_pb2.ExportCsvResponse):
            yield message.chunk

    async def watch(self, request_id: str, *, max_retries: int = 30,
                    retry_delay: float = 0.5,
                    ) -> AsyncIterator[status_pb2.WatchStatusResponse]:
        """Every event until the completion, reconnecting after a dropped stream.

        A reconnect asks for the events after the last version seen, so nothing is missed and
        nothing repeats; the server answers with a fresh snapshot when it has moved on.
        """
        seen = 0
        failures = 0
        while True:
            call = self.status.WatchStatus(
                status_pb2.WatchStatusRequest(request_id=request_id, after_version=seen,
                                              allow_batches=True),
                metadata=self.metadata)
            try:
                while isinstance(message := await call.read(), status_pb2.WatchStatusResponse):
                    failures = 0
                    for event in unbatched(message):
                        seen = max(seen, event.version)
                        yield event
                    if message.WhichOneof("event") == "completed":
                        return
                return  # the server ended the stream without a completion: it is gone
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE_CODES or failures >= max_retries:
                    raise
                failures += 1
                await asyncio.sleep(doubling_delay(failures, first=retry_delay, cap=5.0))
            finally:
                with contextlib.suppress(Exception):
                    call.cancel()


def image_state_filter(status: ImageState | str | None) -> status_pb2.ImageState.ValueType:
    """The wire filter for ``status`` ("failed" or ImageState.FAILED; None: every image).
    Raises ValueError for a name that is not an image state."""
    if status is None:
        return status_pb2.IMAGE_STATE_UNSPECIFIED
    return IMAGE_STATES_TO_PROTO[ImageState(status)]


def unbatched(message: status_pb2.WatchStatusResponse,
              ) -> list[status_pb2.WatchStatusResponse]:
    """The events in one stream message: a ``batch`` holds several, anything else is one."""
    if message.WhichOneof("event") == "batch":
        return list(message.batch.events)
    return [message]
