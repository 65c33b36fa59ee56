"""IngestService.Upload: CSV chunks in, a recorded request and one queued job per image out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from pydantic import ValidationError

from pixpipe.bus import Bus
from pixpipe.csv_input import parse_products_csv
from pixpipe.db.repository import Repository
from pixpipe.domain import RequestOptions
from pixpipe.errors import CsvFault, CsvValidationError, InvalidOptionError
from pixpipe.grpc_errors import abort_with_status, status_for_csv_error, status_for_option_error
from pixpipe.metrics import IngestMetrics
from pixpipe.net_policy import check_url_syntax
from pixpipe.settings import Settings
from pixpipe.status_messages import options_from_proto
from pixpipe.v1 import ingest_pb2, ingest_pb2_grpc

log = logging.getLogger(__name__)

UPLOAD_ACCEPTED = "File uploaded successfully"


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, settings: Settings, repository: Repository, bus: Bus,
                 metrics: IngestMetrics | None = None) -> None:
        self._metrics = metrics or IngestMetrics()
        self._settings = settings
        self._repository = repository
        self._bus = bus

    async def Upload(
        self,
        request_iterator: AsyncIterator[ingest_pb2.UploadRequest],
        context: grpc.aio.ServicerContext[ingest_pb2.UploadRequest, ingest_pb2.UploadResponse],
    ) -> ingest_pb2.UploadResponse:
        try:
            metadata, data = await self._receive(request_iterator)
            options = _options(metadata)
            webhook_url = _webhook_url(metadata, self._settings.max_url_length)
            settings = self._settings
            parsed = await asyncio.to_thread(
                parse_products_csv, data, max_bytes=settings.max_upload_bytes,
                max_images=settings.max_images_per_request,
                max_url_length=settings.max_url_length)
        except CsvValidationError as error:
            self._metrics.uploads.labels("refused").inc()
            await abort_with_status(context, status_for_csv_error(error))
        except InvalidOptionError as error:
            self._metrics.uploads.labels("refused").inc()
            await abort_with_status(context, status_for_option_error(error))
        del data  # the parsed rows are all we keep; free the raw upload early

        request_id, jobs = await self._repository.create_request(
            parsed, options=options, webhook_url=webhook_url,
            file_name=metadata.file_name[:255])
        try:
            await self._bus.publish_jobs(jobs)
        except Exception:
            log.exception("queueing request %s failed; failing its images", request_id)
            self._metrics.uploads.labels("unqueued").inc()
            await self._repository.fail_unqueued_request(
                request_id, "could not be queued: message broker unavailable")
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "the job queue is unavailable; nothing was queued, try again")
        self._metrics.uploads.labels("accepted").inc()
        self._metrics.images_queued.inc(len(jobs))
        log.info("accepted request %s: %d products, %d images", request_id,
                 len(parsed.rows), len(jobs))
        return ingest_pb2.UploadResponse(request_id=request_id, image_count=len(jobs),
                                         message=UPLOAD_ACCEPTED)

    async def _receive(self, request_iterator: AsyncIterator[ingest_pb2.UploadRequest],
                       ) -> tuple[ingest_pb2.UploadMetadata, bytes]:
        """Collect the stream, refusing it as soon as it passes the size limit."""
        limit = self._settings.max_upload_bytes
        metadata: ingest_pb2.UploadMetadata | None = None
        buffer = bytearray()
        async for message in request_iterator:
            kind = message.WhichOneof("payload")
            if kind == "metadata":
                if metadata is not None or buffer:
                    raise InvalidOptionError("metadata",
                                             "must be sent once, before the first chunk")
                metadata = message.metadata
            elif kind == "chunk":
                if len(buffer) + len(message.chunk) > limit:
                    raise CsvValidationError([CsvFault(
                        line=0, column=0, field="",
                        reason=f"file exceeds the {limit // (1024 * 1024)} MB size limit")])
                buffer.extend(message.chunk)
        return metadata or ingest_pb2.UploadMetadata(), bytes(buffer)


def _options(metadata: ingest_pb2.UploadMetadata) -> RequestOptions:
    try:
        return options_from_proto(metadata.options)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "options"
        raise InvalidOptionError(field, first["msg"]) from None


def _webhook_url(metadata: ingest_pb2.UploadMetadata, max_length: int) -> str | None:
    url = metadata.webhook_url.strip()
    if not url:
        return None
    try:
        check_url_syntax(url, max_length=max_length)
    except ValueError as error:
        raise InvalidOptionError("webhook_url", str(error)) from None
    return url
