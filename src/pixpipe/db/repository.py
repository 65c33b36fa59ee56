"""Every query pixpipe runs: recording requests and image results, reading status."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    DateTime,
    Integer,
    Row,
    Table,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pixpipe.csv_input import ParsedCsv
from pixpipe.db.models import ImageRecord, ProductRecord, RequestRecord, WebhookDelivery
from pixpipe.db.request_writes import RequestWriter
from pixpipe.db.transactions import TransactionRunner
from pixpipe.domain import (
    TERMINAL_REQUEST_STATES,
    ImageChange,
    ImageCursor,
    ImageJob,
    ImageOutcome,
    ImagePage,
    ImageState,
    ImageSuccess,
    ImageView,
    RequestCounters,
    RequestOptions,
    RequestState,
    RequestView,
    WebhookView,
)
from pixpipe.job_batch import JobBatch
from pixpipe.output_csv import OutputImage
from pixpipe.paging import FIRST_PAGE, ImagePageQuery

_OPEN_IMAGE_STATES = (ImageState.PENDING.value, ImageState.PROCESSING.value)
_OPEN_REQUEST_STATES = (RequestState.PENDING.value, RequestState.PROCESSING.value)


_images: Table = ImageRecord.__table__  # type: ignore[assignment]
_requests: Table = RequestRecord.__table__  # type: ignore[assignment]
_deliveries: Table = WebhookDelivery.__table__  # type: ignore[assignment]
_products: Table = ProductRecord.__table__  # type: ignore[assignment]
# Names are stored once per product; an image row reads its product's (also in RETURNING).
_PRODUCT_NAME = (select(_products.c.product_name)
                 .where(_products.c.id == _images.c.product_id)
                 .correlate(_images).scalar_subquery().label("product_name"))
_IMAGE_COLUMNS = (_images.c.request_id, _images.c.id, _images.c.serial_number,
                  _PRODUCT_NAME, _images.c.position, _images.c.input_url,
                  _images.c.status, _images.c.error, _images.c.output_path,
                  _images.c.bytes_in, _images.c.bytes_out, _images.c.quality_used,
                  _images.c.encoder, _images.c.effort, _images.c.score)
_NOW = bindparam("p_now", type_=DateTime(timezone=True))


def _one_of(column: ColumnElement[str], values: Sequence[str]) -> ColumnElement[bool]:
    """``column IN (values)`` with plain parameters: ``in_()`` binds an expanding list that
    SQLAlchemy rewrites into the SQL text on every execution, which in the statements below
    cost more CPU than running them."""
    return or_(*(column == value for value in values))


_IMAGE_IS_OPEN = _one_of(_images.c.status, _OPEN_IMAGE_STATES)

# The hot statements are built once; workers run them for every image.
_OPEN_JOBS = (
    select(_images.c.id, _images.c.request_id, _images.c.input_url, _requests.c.options,
           _requests.c.api_key_id)
    .join(_requests, _requests.c.id == _images.c.request_id)
    .where(_images.c.id.in_(bindparam("p_image_ids", expanding=True)), _IMAGE_IS_OPEN)
)
_START_IMAGE = (
    update(_images)
    .where(_images.c.id == bindparam("p_image_id"), _IMAGE_IS_OPEN)
    .values(status=ImageState.PROCESSING.value, attempts=_images.c.attempts + 1,
            worker=bindparam("p_worker"), updated_at=_NOW)
    .returning(*_IMAGE_COLUMNS)
)
# A job that settles before its image was marked processing (a quick 404) still counts
# as an attempt.
_ATTEMPTS_IF_UNSTARTED = case(
    (_images.c.status == ImageState.PENDING.value, _images.c.attempts + 1),
    else_=_images.c.attempts)
_FINISH_IMAGE = (
    update(_images)
    .where(_images.c.id == bindparam("p_image_id"), _IMAGE_IS_OPEN)
    .values(status=bindparam("p_status"), attempts=_ATTEMPTS_IF_UNSTARTED,
            error=bindparam("p_error"),
            output_path=bindparam("p_output_path"), bytes_in=bindparam("p_bytes_in"),
            bytes_out=bindparam("p_bytes_out"), width=bindparam("p_width"),
            height=bindparam("p_height"), quality_used=bindparam("p_quality_used"),
            encoder=bindparam("p_encoder"), effort=bindparam("p_effort"),
            score=bindparam("p_score"), updated_at=_NOW)
    .returning(*_IMAGE_COLUMNS)
)
_NOTE_RETRY = (
    update(_images)
    .where(_images.c.id == bindparam("p_image_id"), _IMAGE_IS_OPEN)
    .values(error=bindparam("p_reason"), attempts=_ATTEMPTS_IF_UNSTARTED, updated_at=_NOW)
)
_COMPLETED_NOW = bindparam("p_completed", type_=Integer)
_FAILED_NOW = bindparam("p_failed", type_=Integer)
_FINISHED = (_requests.c.completed + _COMPLETED_NOW + _requests.c.failed + _FAILED_NOW
             >= _requests.c.total)
_BUMP_REQUEST = (
    update(_requests)
    .where(_requests.c.id == bindparam("p_request_id"),
           _one_of(_requests.c.status, _OPEN_REQUEST_STATES))
    .values(
        completed=_requests.c.completed + _COMPLETED_NOW,
        failed=_requests.c.failed + _FAILED_NOW,
        version=_requests.c.version + 1,
        updated_at=_NOW,
        status=case(
            (_FINISHED & (_requests.c.completed + _COMPLETED_NOW > 0),
             RequestState.COMPLETED.value),
            (_FINISHED, RequestState.FAILED.value),
            else_=RequestState.PROCESSING.value,
        ),
        completed_at=case((_FINISHED, _NOW), else_=_requests.c.completed_at),
    )
    .returning(_requests.c.status, _requests.c.total, _requests.c.completed,
               _requests.c.failed, _requests.c.version, _requests.c.webhook_url)
)


def _bump_request(connection: Connection, request_id: str, now: datetime, *, completed: int,
                  failed: int) -> RequestCounters | None:
    """Count one image change on its request; queue the webhook if this finished it."""
    row = connection.execute(_BUMP_REQUEST, {
        "p_request_id": request_id, "p_completed": completed, "p_failed": failed,
        "p_now": now}).one_or_none()
    if row is None:
        return None
    status = RequestState(row.status)
    if status in TERMINAL_REQUEST_STATES and row.webhook_url:
        # The outbox row commits with the completion itself: never lost, never doubled.
        connection.execute(insert(_deliveries).values(
            id=webhook_message_id(request_id, status.value), request_id=request_id,
            event_type=f"request.{status.value}", url=row.webhook_url, state="pending",
            attempts=0, next_attempt_at=now, created_at=now))
    return RequestCounters(status=status, total=row.total, completed=row.completed,
                           failed=row.failed, version=row.version)


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
        self._writes = TransactionRunner(sessions.kw["bind"])

    def close(self) -> None:
        self._writes.dispose()

    @property
    def writes(self) -> TransactionRunner:
        """This process's write transactions, for other modules' writes to join (on SQLite
        a second writer would wait on the database lock with sleeps)."""
        return self._writes

    async def create_request(
        self,
        parsed: ParsedCsv,
        *,
        options: RequestOptions,
        webhook_url: str | None,
        file_name: str,
        committed: Callable[[JobBatch], Coroutine[Any, Any, None]] | None = None,
        api_key_id: str | None = None,
        express: bool = False,
    ) -> tuple[str, JobBatch]:
        """Record a validated upload with its products and images; return the jobs to queue.

        With ``committed``, the images are written in parts, each handed to it (to queue) as
        soon as it is committed: see RequestWriter.record.
        """
        jobs = await RequestWriter(self._sessions.kw["bind"], self._writes).record(
            parsed, options=options, webhook_url=webhook_url, file_name=file_name,
            committed=committed, api_key_id=api_key_id, express=express)
        return jobs.request_id, jobs

    async def fail_unqueued_request(self, request_id: str, reason: str) -> None:
        """Fail every open image of a request whose jobs could not all be queued."""
        await RequestWriter(self._sessions.kw["bind"], self._writes).fail_unqueued(
            request_id, reason)

    async def open_jobs(self, image_ids: Sequence[str]) -> dict[str, ImageJob]:
        """The jobs of those images that are open, as the database records them (request,
        URL, options and key), whatever messages on the bus claim; one read for a batch."""
        if not image_ids:
            return {}
        # A plain connection, not an ORM session: workers ask this for every batch of jobs.
        async with self._sessions.kw["bind"].connect() as connection:
            rows = (await connection.execute(_OPEN_JOBS, {"p_image_ids": list(image_ids)})
                    ).all()
        return {row.id: ImageJob.model_construct(  # the database's own values
            request_id=row.request_id, image_id=row.id, url=row.input_url,
            options=RequestOptions.model_validate(row.options or {}),
            tenant=row.api_key_id or "") for row in rows}

    async def start_image(self, image_id: str, *, worker: str = "") -> ImageChange | None:
        """Mark an image processing; None when it is unknown or already terminal."""

        def work(connection: Connection) -> ImageChange | None:
            now = utcnow()
            image = connection.execute(_START_IMAGE, {
                "p_image_id": image_id, "p_worker": worker or None, "p_now": now,
            }).one_or_none()
            if image is None:
                return None
            counters = _bump_request(connection, image.request_id, now, completed=0, failed=0)
            if counters is None:
                return None
            return ImageChange(request_id=image.request_id, image=_image_view(image),
                               counters=counters)

        return await self._writes.run(work)

    async def note_retry(self, image_id: str, reason: str) -> None:
        """Remember the last transient fault so a final failure can name it."""

        def work(connection: Connection) -> None:
            connection.execute(_NOTE_RETRY, {"p_image_id": image_id, "p_reason": reason,
                                             "p_now": utcnow()})

        await self._writes.run(work)

    async def last_error(self, image_id: str) -> str | None:
        async with self._sessions() as session:
            return await session.scalar(
                select(ImageRecord.error).where(ImageRecord.id == image_id))

    async def finish_image(self, image_id: str, outcome: ImageOutcome) -> ImageChange | None:
        """Record an image's result exactly once; None when it was already terminal.

        The guard on the image's state makes a redelivered job a no-op, and the counter
        update decides in the same transaction whether this commit finished the request
        (and, when it did, queues the request's webhook in the same commit).
        """
        succeeded = isinstance(outcome, ImageSuccess)
        values: dict[str, Any] = {
            "p_image_id": image_id, "p_output_path": None, "p_bytes_out": None,
            "p_width": None, "p_height": None, "p_error": None, "p_quality_used": None,
            "p_encoder": None, "p_effort": None, "p_score": None,
            "p_status": (ImageState.COMPLETED if succeeded else ImageState.FAILED).value,
            "p_bytes_in": outcome.bytes_in,
        }
        if isinstance(outcome, ImageSuccess):
            values.update(p_output_path=outcome.output_path, p_bytes_out=outcome.bytes_out,
                          p_width=outcome.width, p_height=outcome.height,
                          p_quality_used=outcome.quality_used, p_encoder=outcome.encoder,
                          p_effort=outcome.effort, p_score=outcome.score)
        else:
            values.update(p_error=outcome.reason)

        def work(connection: Connection) -> ImageChange | None:
            now = utcnow()
            image = connection.execute(_FINISH_IMAGE, {**values, "p_now": now}).one_or_none()
            if image is None:
                return None
            counters = _bump_request(connection, image.request_id, now,
                                     completed=int(succeeded), failed=int(not succeeded))
            if counters is None:
                return None
            return ImageChange(request_id=image.request_id, image=_image_view(image),
                               counters=counters,
                               finished_request=counters.status in TERMINAL_REQUEST_STATES)

        return await self._writes.run(work)

    async def get_request(self, request_id: str, *,
                          images: ImagePageQuery | None = FIRST_PAGE) -> RequestView | None:
        """The request's summary (O(1): counters live on the request row) and one page of
        its images; ``images=None`` reads the summary alone."""
        async with self._sessions() as session:
            record = await session.get(RequestRecord, request_id)
            if record is None:
                return None
            delivery = await session.scalar(
                select(WebhookDelivery).where(WebhookDelivery.request_id == request_id))
            page = ImagePage(images=[])
            if images is not None:
                page = await self._image_page(session, request_id, images)
        return _request_view(record, page, _webhook_view(record, delivery),
                             state=images.state if images else None)

    async def belongs_to(self, request_id: str, api_key_id: str | None) -> bool:
        """Whether the request exists and that key (None: no key) uploaded it."""
        async with self._sessions() as session:
            owner = await session.execute(select(RequestRecord.api_key_id).where(
                RequestRecord.id == request_id))
            row = owner.one_or_none()
        return row is not None and row[0] == api_key_id

    async def list_images(self, request_id: str, query: ImagePageQuery) -> ImagePage | None:
        """One page of a request's images; None when the request is unknown."""
        async with self._sessions() as session:
            page = await self._image_page(session, request_id, query)
            if not page.images and await session.get(RequestRecord, request_id) is None:
                return None
        return page

    @staticmethod
    async def _image_page(session: AsyncSession, request_id: str,
                          query: ImagePageQuery) -> ImagePage:
        # Keyset paging on (serial_number, position), which is unique within a request: a
        # page costs the same at the end of 100,000 images as at the start.
        statement = select(*_IMAGE_COLUMNS).where(_images.c.request_id == request_id)
        if query.state is not None:
            statement = statement.where(_images.c.status == query.state.value)
        if query.after is not None:
            statement = statement.where(
                tuple_(_images.c.serial_number, _images.c.position)
                > tuple_(bindparam("p_serial", query.after.serial_number),
                         bindparam("p_position", query.after.position)))
        statement = statement.order_by(_images.c.serial_number, _images.c.position)
        rows = (await session.execute(statement.limit(query.size + 1))).all()
        images = [_image_view(row) for row in rows[:query.size]]
        if len(rows) <= query.size:
            return ImagePage(images=images)
        last = images[-1]
        return ImagePage(images=images, next_after=ImageCursor(last.serial_number,
                                                               last.position))

    async def list_requests(self, *, limit: int, of_key: bool = False,
                            api_key_id: str | None = None) -> list[RequestView]:
        """The newest requests first, without their images; ``of_key``: only those the key
        ``api_key_id`` uploaded (None: those no key uploaded)."""
        query = select(RequestRecord).order_by(RequestRecord.created_at.desc()).limit(limit)
        if of_key:
            query = query.where(RequestRecord.api_key_id.is_(None) if api_key_id is None
                                else RequestRecord.api_key_id == api_key_id)
        async with self._sessions() as session:
            records = (await session.scalars(query)).all()
        return [_request_view(record, ImagePage(images=[])) for record in records]

    async def output_rows(self, request_id: str, *, products_per_read: int = 1000,
                          ) -> AsyncIterator[tuple[list[str], list[OutputImage]]]:
        """Each product's uploaded cells with its images' outputs and receipts in input order,
        read a bounded number of products at a time (memory stays flat at any request size)."""
        after = 0
        while True:
            async with self._sessions() as session:
                products = (await session.execute(
                    select(_products.c.id, _products.c.cells)
                    .where(_products.c.request_id == request_id, _products.c.id > after)
                    .order_by(_products.c.id).limit(products_per_read)
                )).all()
                if not products:
                    return
                first, after = products[0].id, products[-1].id
                images = (await session.execute(
                    select(_images.c.product_id, _images.c.output_path,
                           _images.c.quality_used, _images.c.encoder, _images.c.score)
                    .where(_images.c.request_id == request_id,
                           _images.c.product_id >= first, _images.c.product_id <= after)
                    .order_by(_images.c.product_id, _images.c.position)
                )).all()
            outputs: dict[int, list[OutputImage]] = {}
            for product_id, *output in images:
                outputs.setdefault(product_id, []).append(OutputImage(*output))
            for product_id, cells in products:
                yield list(cells), outputs.get(product_id, [])
            if len(products) < products_per_read:
                return

    async def mark_completion_published(self, request_id: str) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(RequestRecord).where(RequestRecord.id == request_id)
                .values(completion_published_at=utcnow()))

    async def unpublished_completions(self, *, finished_before: datetime,
                                      limit: int = 100) -> Sequence[str]:
        """Terminal requests whose completion event was never confirmed."""
        async with self._sessions() as session:
            return (await session.scalars(
                select(RequestRecord.id)
                .where(RequestRecord.status.in_([s.value for s in TERMINAL_REQUEST_STATES]),
                       RequestRecord.completion_published_at.is_(None),
                       RequestRecord.updated_at < finished_before)
                .limit(limit))).all()

    async def idle_open_requests(self, *, idle_before: datetime,
                                 limit: int = 100) -> Sequence[str]:
        """Requests still open that nothing has changed since ``idle_before``."""
        async with self._sessions() as session:
            return (await session.scalars(
                select(RequestRecord.id)
                .where(RequestRecord.status.in_(_OPEN_REQUEST_STATES),
                       RequestRecord.updated_at < idle_before)
                .order_by(RequestRecord.updated_at).limit(limit))).all()

    async def fail_lost_images(self, request_id: str, reason: str, *,
                               only_processing_before: datetime | None = None,
                               ) -> RequestCounters | None:
        """Fail the open images of a request whose jobs are gone (every open image), or only
        those left ``processing`` since ``only_processing_before`` (a last delivery whose
        worker died and whose max-deliveries advisory was lost). An image keeps the last
        transient fault it noted as its reason. Counts them on the request, which queues its
        webhook when this finished it; None when nothing was failed."""

        def work(connection: Connection) -> RequestCounters | None:
            now = utcnow()
            lost = [_images.c.request_id == request_id, _IMAGE_IS_OPEN]
            if only_processing_before is not None:
                lost += [_images.c.status == ImageState.PROCESSING.value,
                         _images.c.updated_at < only_processing_before]
            failed = connection.execute(
                update(_images).where(*lost)
                .values(status=ImageState.FAILED.value, updated_at=now,
                        error=func.coalesce(_images.c.error, reason))).rowcount
            if not failed:
                return None
            return _bump_request(connection, request_id, now, completed=0, failed=failed)

        return await self._writes.run(work)


def _image_view(row: Row[Any, *tuple[Any, ...]]) -> ImageView:
    return ImageView(
        image_id=row.id, serial_number=row.serial_number, product_name=row.product_name or "",
        position=row.position, input_url=row.input_url, status=ImageState(row.status),
        error=row.error, output_path=row.output_path, bytes_in=row.bytes_in,
        bytes_out=row.bytes_out, quality_used=row.quality_used, encoder=row.encoder,
        effort=row.effort, score=row.score,
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


def _request_view(record: RequestRecord, page: ImagePage, webhook: WebhookView | None = None,
                  *, state: ImageState | None = None) -> RequestView:
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
        header=list(record.header or []), images=page.images, webhook=webhook,
        next_images=page.next_after, images_state=state,
    )


