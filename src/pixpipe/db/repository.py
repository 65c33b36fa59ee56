"""Every query pixpipe runs: recording requests and image results, reading status."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixpipe.csv_input import ParsedCsv
from pixpipe.db.models import ImageRecord, ProductRecord, RequestRecord, WebhookDelivery
from pixpipe.domain import (
    TERMINAL_REQUEST_STATES,
    ImageChange,
    ImageJob,
    ImageOutcome,
    ImageState,
    ImageSuccess,
    ImageView,
    RequestCounters,
    RequestOptions,
    RequestState,
    RequestView,
    WebhookView,
)

_OPEN_IMAGE_STATES = (ImageState.PENDING.value, ImageState.PROCESSING.value)
_OPEN_REQUEST_STATES = (RequestState.PENDING.value, RequestState.PROCESSING.value)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _as_utc(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything pixpipe stores is UTC.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


class Repository:
    """The database side of pixpipe; each method is one short transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def create_request(
        self,
        parsed: ParsedCsv,
        *,
        options: RequestOptions,
        webhook_url: str | None,
        file_name: str,
    ) -> tuple[str, list[ImageJob]]:
        """Record a validated upload with its products and images; return the jobs to queue."""
        request_id = str(uuid.uuid4())
        now = utcnow()
        jobs: list[ImageJob] = []
        async with self._sessions.begin() as session:
            session.add(RequestRecord(
                id=request_id, status=RequestState.PENDING.value, file_name=file_name,
                webhook_url=webhook_url, options=options.model_dump(exclude_none=True),
                header=list(parsed.header), total=parsed.image_count, completed=0, failed=0,
                version=1, created_at=now, updated_at=now,
            ))
            await session.flush()
            product_ids = await session.scalars(
                insert(ProductRecord).returning(ProductRecord.id, sort_by_parameter_order=True),
                [{"request_id": request_id, "serial_number": row.serial_number,
                  "product_name": row.product_name, "line": row.line, "cells": list(row.cells)}
                 for row in parsed.rows],
            )
            image_rows: list[dict[str, Any]] = []
            for row, product_id in zip(parsed.rows, product_ids.all(), strict=True):
                for position, url in enumerate(row.image_urls):
                    image_id = uuid.uuid4().hex
                    image_rows.append({
                        "id": image_id, "request_id": request_id, "product_id": product_id,
                        "serial_number": row.serial_number, "position": position,
                        "input_url": url, "status": ImageState.PENDING.value, "attempts": 0,
                        "updated_at": now,
                    })
                    jobs.append(ImageJob(request_id=request_id, image_id=image_id, url=url,
                                         options=options))
            if image_rows:
                await session.execute(insert(ImageRecord), image_rows)
        return request_id, jobs

    async def fail_unqueued_request(self, request_id: str, reason: str) -> None:
        """Fail every open image of a request whose jobs could not all be queued."""
        now = utcnow()
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(ImageRecord)
                .where(ImageRecord.request_id == request_id,
                       ImageRecord.status.in_(_OPEN_IMAGE_STATES))
                .values(status=ImageState.FAILED.value, error=reason, updated_at=now)
            )
            newly_failed = int(getattr(result, "rowcount", 0) or 0)
            await session.execute(
                update(RequestRecord)
                .where(RequestRecord.id == request_id)
                .values(failed=RequestRecord.failed + newly_failed, error=reason,
                        version=RequestRecord.version + 1, updated_at=now, completed_at=now,
                        status=case((RequestRecord.completed > 0, RequestState.COMPLETED.value),
                                    else_=RequestState.FAILED.value))
            )

    async def start_image(self, image_id: str, *, worker: str = "") -> ImageChange | None:
        """Mark an image processing; None when it is unknown or already terminal."""
        now = utcnow()
        async with self._sessions.begin() as session:
            request_id = await session.scalar(
                update(ImageRecord)
                .where(ImageRecord.id == image_id, ImageRecord.status.in_(_OPEN_IMAGE_STATES))
                .values(status=ImageState.PROCESSING.value, attempts=ImageRecord.attempts + 1,
                        worker=worker or None, updated_at=now)
                .returning(ImageRecord.request_id)
            )
            if request_id is None:
                return None
            counters = await self._bump_request(session, request_id, now, completed=0, failed=0)
            if counters is None:
                return None
            image = await self._image_view(session, image_id)
        return ImageChange(request_id=request_id, image=image, counters=counters)

    async def note_retry(self, image_id: str, reason: str) -> None:
        """Remember the last transient fault so a final failure can name it."""
        async with self._sessions.begin() as session:
            await session.execute(
                update(ImageRecord)
                .where(ImageRecord.id == image_id, ImageRecord.status.in_(_OPEN_IMAGE_STATES))
                .values(error=reason, updated_at=utcnow())
            )

    async def last_error(self, image_id: str) -> str | None:
        async with self._sessions() as session:
            return await session.scalar(
                select(ImageRecord.error).where(ImageRecord.id == image_id))

    async def finish_image(self, image_id: str, outcome: ImageOutcome) -> ImageChange | None:
        """Record an image's result exactly once; None when it was already terminal.

        The guard on the image's state makes a redelivered job a no-op, and the counter
        update decides in the same transaction whether this commit finished the request.
        """
        now = utcnow()
        values: dict[str, Any] = {"updated_at": now}
        if isinstance(outcome, ImageSuccess):
            values.update(status=ImageState.COMPLETED.value, error=None,
                          output_path=outcome.output_path, bytes_in=outcome.bytes_in,
                          bytes_out=outcome.bytes_out, width=outcome.width,
                          height=outcome.height)
        else:
            values.update(status=ImageState.FAILED.value, error=outcome.reason,
                          bytes_in=outcome.bytes_in)
        async with self._sessions.begin() as session:
            request_id = await session.scalar(
                update(ImageRecord)
                .where(ImageRecord.id == image_id, ImageRecord.status.in_(_OPEN_IMAGE_STATES))
                .values(**values)
                .returning(ImageRecord.request_id)
            )
            if request_id is None:
                return None
            succeeded = isinstance(outcome, ImageSuccess)
            counters = await self._bump_request(session, request_id, now,
                                                completed=int(succeeded),
                                                failed=int(not succeeded))
            if counters is None:
                return None
            if counters.status in TERMINAL_REQUEST_STATES:
                await self._schedule_webhook(session, request_id, counters.status, now)
            image = await self._image_view(session, image_id)
        return ImageChange(request_id=request_id, image=image, counters=counters,
                           finished_request=counters.status in TERMINAL_REQUEST_STATES)

    async def _schedule_webhook(self, session: AsyncSession, request_id: str,
                                status: RequestState, now: datetime) -> None:
        """The outbox row for the completion webhook, committed with the completion itself."""
        url = await session.scalar(
            select(RequestRecord.webhook_url).where(RequestRecord.id == request_id))
        if not url:
            return
        session.add(WebhookDelivery(
            id=webhook_message_id(request_id, status.value), request_id=request_id,
            event_type=f"request.{status.value}", url=url, state="pending", attempts=0,
            next_attempt_at=now, created_at=now))

    async def _bump_request(
        self, session: AsyncSession, request_id: str, now: datetime, *, completed: int,
        failed: int,
    ) -> RequestCounters | None:
        done_after = RequestRecord.completed + completed + RequestRecord.failed + failed
        finished = done_after >= RequestRecord.total
        row = (await session.execute(
            update(RequestRecord)
            .where(RequestRecord.id == request_id,
                   RequestRecord.status.in_(_OPEN_REQUEST_STATES))
            .values(
                completed=RequestRecord.completed + completed,
                failed=RequestRecord.failed + failed,
                version=RequestRecord.version + 1,
                updated_at=now,
                status=case(
                    (finished & (RequestRecord.completed + completed > 0),
                     RequestState.COMPLETED.value),
                    (finished, RequestState.FAILED.value),
                    else_=RequestState.PROCESSING.value,
                ),
                completed_at=case((finished, now), else_=RequestRecord.completed_at),
            )
            .returning(RequestRecord.status, RequestRecord.total, RequestRecord.completed,
                       RequestRecord.failed, RequestRecord.version)
        )).one_or_none()
        if row is None:
            return None
        return RequestCounters(status=RequestState(row.status), total=row.total,
                               completed=row.completed, failed=row.failed, version=row.version)

    async def _image_view(self, session: AsyncSession, image_id: str) -> ImageView:
        row = (await session.execute(
            select(ImageRecord, ProductRecord.product_name)
            .join(ProductRecord, ProductRecord.id == ImageRecord.product_id)
            .where(ImageRecord.id == image_id)
        )).one()
        return _image_view(row[0], row[1])

    async def get_request(self, request_id: str, *, include_images: bool = True,
                          ) -> RequestView | None:
        async with self._sessions() as session:
            record = await session.get(RequestRecord, request_id)
            if record is None:
                return None
            delivery = await session.scalar(
                select(WebhookDelivery).where(WebhookDelivery.request_id == request_id))
            images: list[ImageView] = []
            if include_images:
                rows = (await session.execute(
                    select(ImageRecord, ProductRecord.product_name)
                    .join(ProductRecord, ProductRecord.id == ImageRecord.product_id)
                    .where(ImageRecord.request_id == request_id)
                    .order_by(ImageRecord.serial_number, ImageRecord.position)
                )).all()
                images = [_image_view(image, name) for image, name in rows]
        return _request_view(record, images, _webhook_view(record, delivery))

    async def list_requests(self, *, limit: int) -> list[RequestView]:
        """The newest requests first, without their images."""
        async with self._sessions() as session:
            records = (await session.scalars(
                select(RequestRecord).order_by(RequestRecord.created_at.desc()).limit(limit)
            )).all()
        return [_request_view(record, []) for record in records]

    async def output_rows(self, request_id: str) -> list[tuple[list[str], list[str | None]]]:
        """Each product's uploaded cells with its images' output paths in input order."""
        async with self._sessions() as session:
            products = (await session.execute(
                select(ProductRecord.id, ProductRecord.cells)
                .where(ProductRecord.request_id == request_id)
                .order_by(ProductRecord.line)
            )).all()
            images = (await session.execute(
                select(ImageRecord.product_id, ImageRecord.position, ImageRecord.output_path)
                .where(ImageRecord.request_id == request_id)
                .order_by(ImageRecord.product_id, ImageRecord.position)
            )).all()
        outputs: dict[int, list[str | None]] = {}
        for product_id, _position, output_path in images:
            outputs.setdefault(product_id, []).append(output_path)
        return [(list(cells), outputs.get(product_id, [])) for product_id, cells in products]

    async def open_image_ids(self, request_id: str) -> Sequence[str]:
        async with self._sessions() as session:
            return (await session.scalars(
                select(ImageRecord.id).where(ImageRecord.request_id == request_id,
                                             ImageRecord.status.in_(_OPEN_IMAGE_STATES))
            )).all()


def _image_view(record: ImageRecord, product_name: str) -> ImageView:
    return ImageView(
        image_id=record.id, serial_number=record.serial_number, product_name=product_name,
        position=record.position, input_url=record.input_url,
        status=ImageState(record.status), error=record.error, output_path=record.output_path,
        bytes_in=record.bytes_in, bytes_out=record.bytes_out,
    )


def webhook_message_id(request_id: str, status: str) -> str:
    return f"msg_{request_id.replace('-', '')}_{status}"


def _webhook_view(record: RequestRecord, delivery: WebhookDelivery | None,
                  ) -> WebhookView | None:
    if not record.webhook_url:
        return None
    if delivery is None:
        return WebhookView(url=record.webhook_url, state="waiting")
    return WebhookView(url=delivery.url, state=delivery.state, attempts=delivery.attempts,
                       last_status_code=delivery.last_status_code,
                       last_error=delivery.last_error)


def _request_view(record: RequestRecord, images: list[ImageView],
                  webhook: WebhookView | None = None) -> RequestView:
    created_at = _as_utc(record.created_at)
    assert created_at is not None
    return RequestView(
        request_id=record.id, file_name=record.file_name,
        options=RequestOptions.model_validate(record.options or {}),
        webhook_url=record.webhook_url,
        counters=RequestCounters(status=RequestState(record.status), total=record.total,
                                 completed=record.completed, failed=record.failed,
                                 version=record.version),
        created_at=created_at, completed_at=_as_utc(record.completed_at),
        header=list(record.header or []), images=images, webhook=webhook,
    )


